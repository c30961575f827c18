// Prints the Khronos glTF validator's report for one .glb file as JSON (used by tests/test_export.py).
import { readFileSync } from "node:fs";
import validator from "gltf-validator";

const data = new Uint8Array(readFileSync(process.argv[2]));
const report = await validator.validateBytes(data, { maxIssues: 100 });
console.log(JSON.stringify(report));
