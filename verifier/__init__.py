"""verifier: what a creator, buyer or auditor runs to check the log without trusting it.

Builds on tlog alone (plus httpx for fetching, and starlette only in the witness server).
Must not import log_server, edge_signer, anchor or billing.
"""
