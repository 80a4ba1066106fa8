#!/usr/bin/env node
// Validate an AsyncAPI document (JSON or YAML text) with the reference parser
// `@asyncapi/parser` (pinned in ./package.json).
//
// Usage:  node validate_asyncapi.mjs <path>     (read the document from a file)
//         node validate_asyncapi.mjs -          (read the document from stdin)
//
// Prints exactly one JSON object on stdout:
//   {"valid": bool,
//    "errors":   [{"code", "message", "path", "severity"}...],   severity 0
//    "warnings": [{"code", "message", "path", "severity"}...]}   severity 1..3
// `path` is the JSON path of the offending node as a list of keys/indexes.
//
// Exit status: 0  valid (no severity-0 diagnostic and a non-null parsed document)
//              1  invalid (see "errors")
//              2  usage, I/O or internal error (the JSON object is still printed, with
//                 "valid": false and a single error whose code is "usage" or
//                 "read-error" or "internal-error")
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { Parser } from '@asyncapi/parser';

function emit(result, exitCode) {
  // Let Node flush stdout on its own (process.exit() could truncate a pipe).
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exitCode = exitCode;
}

function toolError(code, message) {
  emit({ valid: false, errors: [{ code, message, path: [], severity: 0 }], warnings: [] }, 2);
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function simplify(d) {
  return {
    code: d.code,
    message: d.message,
    path: Array.isArray(d.path) ? d.path : [],
    severity: d.severity,
  };
}

async function main(argv) {
  if (argv.length !== 1) {
    toolError('usage', 'usage: validate_asyncapi.mjs <path-to-asyncapi-document | ->');
    return;
  }
  const arg = argv[0];
  let text;
  let source;
  try {
    if (arg === '-') {
      text = await readStdin();
    } else {
      source = resolve(arg);
      text = await readFile(source, 'utf8');
    }
  } catch (err) {
    toolError('read-error', `cannot read ${arg}: ${err && err.message ? err.message : err}`);
    return;
  }

  const parser = new Parser();
  // `source` lets relative external $refs resolve against the file's folder.
  const { document, diagnostics } = await parser.parse(text, source ? { source } : {});
  const errors = [];
  const warnings = [];
  for (const d of diagnostics || []) {
    (d.severity === 0 ? errors : warnings).push(simplify(d));
  }
  const valid = errors.length === 0 && document != null;
  if (!valid && errors.length === 0) {
    errors.push({ code: 'no-document', message: 'parser returned no document', path: [], severity: 0 });
  }
  emit({ valid, errors, warnings }, valid ? 0 : 1);
}

main(process.argv.slice(2)).catch((err) => {
  toolError('internal-error', String(err && err.stack ? err.stack : err));
});
