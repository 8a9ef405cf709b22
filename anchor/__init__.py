"""anchor: checkpoints written to an Ethereum chain and read back. The only user of web3
(in ``anchor/chain.py``). Builds on tlog alone. Filled in by the anchoring issue.
"""
