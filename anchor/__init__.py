"""anchor: checkpoints written to an Ethereum chain and read back.

``anchor.record`` (the call and event formats, the origin hash, :class:`AnchorRecord`),
``anchor.artifact`` (the committed contract: ABI and bytecode from ``anchor/solidity/``) and
``anchor.secret`` (the anchoring key) are pure; ``anchor.chain`` is the only module of meterlog
that imports web3 (and eth_account, eth_tester). Builds on tlog alone: it must not import
verifier, edge_signer, billing, log_server or cli.
"""
