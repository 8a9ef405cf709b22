// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Anchors of meterlog checkpoints
/// @notice One event per anchor, and nothing stored: an event costs a few hundred gas where a
/// storage slot costs 22,100, and whoever checks an anchor reads events anyway.
/// @dev The sender is taken from msg.sender, so a verifier that checked this contract's code
/// may trust the `sender` topic; anyone may call `anchor`, so only the sender says whose
/// anchor it is. The origin hash is SHA-256 of the log's origin line (computed off chain).
contract MeterlogAnchor {
    /// @notice A log committed to its first `treeSize` entries having Merkle root `rootHash`.
    event Anchored(
        bytes32 indexed originHash,
        address indexed sender,
        uint64 treeSize,
        bytes32 rootHash
    );

    /// @notice Anchor one checkpoint: (SHA-256 of its origin, its tree size, its root hash).
    function anchor(bytes32 originHash, uint64 treeSize, bytes32 rootHash) external {
        emit Anchored(originHash, msg.sender, treeSize, rootHash);
    }
}
