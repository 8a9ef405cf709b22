"""billing: payouts over committed log ranges, and signed reproducible statements. Reads the
log like any auditor, through tlog and verifier; must not import log_server, edge_signer or
anchor. Filled in by the billing issue.
"""
