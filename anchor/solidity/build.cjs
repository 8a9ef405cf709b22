// Rebuilds the anchor contract from MeterlogAnchor.sol with the pinned compiler and settings,
// and writes (or, with --check, compares byte for byte) the committed ABI and bytecode.
//
//   node anchor/solidity/build.cjs           write MeterlogAnchor.{abi.json,bin,bin-runtime}
//   node anchor/solidity/build.cjs --check   exit 1 if any committed file differs
//
// The compiler is the `solc` package of the npm registry at the exact version that
// package-lock.json pins (solc-js: the official compiler built to WebAssembly, so the same
// bytes on every machine); `make contract` and `make contract-check` run this script.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const solc = require("solc");

const HERE = __dirname;
const SOURCE = "MeterlogAnchor.sol";
const NAME = "MeterlogAnchor";
const COMPILER = "0.8.37+commit.f401782d.Emscripten.clang";

// Everything that decides the bytecode, besides the source and the compiler.
const SETTINGS = {
  // Paris: the EVM of the Merge, without Shanghai's PUSH0, so the contract deploys on any
  // EVM chain of the last years, including ones that lag behind mainnet's upgrades.
  evmVersion: "paris",
  optimizer: { enabled: true, runs: 1000000 },
  // The default metadata (an IPFS hash of the source and settings, CBOR-appended), so the
  // deployed code can be matched to this source by source-verification services.
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] },
  },
};

function build() {
  if (solc.version() !== COMPILER) {
    throw new Error(`solc ${solc.version()} is not the pinned ${COMPILER}: run npm ci`);
  }
  const input = {
    language: "Solidity",
    sources: { [SOURCE]: { content: fs.readFileSync(path.join(HERE, SOURCE), "utf8") } },
    settings: SETTINGS,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const message of output.errors || []) process.stderr.write(message.formattedMessage);
  if (errors.length) throw new Error("compilation failed");
  const contract = output.contracts[SOURCE][NAME];
  return {
    [`${NAME}.abi.json`]: JSON.stringify(contract.abi, null, 2) + "\n",
    [`${NAME}.bin`]: contract.evm.bytecode.object + "\n",
    [`${NAME}.bin-runtime`]: contract.evm.deployedBytecode.object + "\n",
  };
}

function main() {
  const check = process.argv.includes("--check");
  const files = build();
  let differ = 0;
  for (const [name, text] of Object.entries(files)) {
    const target = path.join(HERE, name);
    if (check) {
      const committed = fs.existsSync(target) ? fs.readFileSync(target) : null;
      if (committed === null || !committed.equals(Buffer.from(text, "utf8"))) {
        process.stderr.write(`${name}: differs from what ${COMPILER} builds from ${SOURCE}\n`);
        differ += 1;
      }
    } else {
      fs.writeFileSync(target, text);
    }
  }
  if (check && differ) process.exit(1);
  process.stderr.write(
    `${check ? "checked" : "wrote"} ${Object.keys(files).join(", ")} (solc ${COMPILER}, ` +
      `evmVersion ${SETTINGS.evmVersion}, optimizer runs ${SETTINGS.optimizer.runs})\n`,
  );
}

main();
