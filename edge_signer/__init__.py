"""edge_signer: receipts at the point of delivery (signing library, ASGI middleware, spool,
batch submitter). Builds on tlog alone; must not import log_server, verifier, anchor or billing.
Filled in by the edge-signer issue.
"""
