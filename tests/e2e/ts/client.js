// The TypeScript SDK (@temporalio/client) through temporal-auth-proxy with mTLS and an API key.
// Run by tests/e2e/test_typescript_sdk.py, which asserts on the JSON summary printed on stdout;
// README "TypeScript SDK" shows connect() below. Plain JS so no build step is needed.
'use strict';

const fs = require('node:fs');
const { Client, Connection } = require('@temporalio/client');
const { google, temporal } = require('@temporalio/proto');

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

// --- what the README shows -------------------------------------------------------------
async function connect({ address, namespace, apiKey, caFile, certFile, keyFile, serverName }) {
  const connection = await Connection.connect({
    address, // the proxy, e.g. 127.0.0.1:7233
    tls: {
      serverNameOverride: serverName, // a name in the proxy's certificate, e.g. proxy.test
      serverRootCACertificate: fs.readFileSync(caFile),
      clientCertPair: { crt: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) },
    },
    apiKey, // sent as `authorization: Bearer <apiKey>`
    connectTimeout: '10s',
  });
  return { connection, client: new Client({ connection, namespace }) };
}
// ----------------------------------------------------------------------------------------

// What a caller can read from a denial: grpc-js's ServiceError (the SDK wraps it as `cause`)
// and the google.rpc.Status details in `grpc-status-details-bin`.
function describeError(err) {
  const grpcError = err && err.cause && err.cause.code !== undefined ? err.cause : err;
  const out = {
    name: err && err.name,
    message: err && err.message,
    code: grpcError && grpcError.code,
    details: grpcError && grpcError.details,
    statusDetails: [],
  };
  const raw = grpcError && grpcError.metadata && grpcError.metadata.get('grpc-status-details-bin');
  if (raw && raw.length > 0 && typeof raw[0] !== 'string') {
    for (const any of google.rpc.Status.decode(raw[0]).details) {
      const entry = { typeUrl: any.type_url };
      if (any.type_url.endsWith('/temporal.api.errordetails.v1.PermissionDeniedFailure')) {
        const failure = temporal.api.errordetails.v1.PermissionDeniedFailure.decode(any.value);
        entry.reason = failure.reason;
      }
      out.statusDetails.push(entry);
    }
  }
  return out;
}

async function main() {
  const common = {
    address: env('TAP_ADDRESS'),
    namespace: env('TAP_NAMESPACE'),
    caFile: env('TAP_CA_FILE'),
    certFile: env('TAP_CERT_FILE'),
    keyFile: env('TAP_KEY_FILE'),
    serverName: env('TAP_SERVER_NAME'),
  };
  const taskQueue = env('TAP_TASK_QUEUE');
  const workflowId = env('TAP_WORKFLOW_ID');
  const summary = { node: process.version };

  const { connection, client } = await connect({ ...common, apiKey: env('TAP_API_KEY') });
  try {
    const handle = await client.workflow.start('GreetingWorkflow', {
      taskQueue,
      workflowId,
      args: ['typescript'],
    });
    summary.started = { workflowId: handle.workflowId, runId: handle.firstExecutionRunId };
    const described = await handle.describe();
    summary.described = {
      workflowId: described.workflowId,
      type: described.type,
      taskQueue: described.taskQueue,
    };
    // The Python worker in the test runs it; result() long-polls through the proxy.
    summary.result = await handle.result();
    summary.closedStatus = (await handle.describe()).status.name;
    // Visibility is eventually consistent: look for the workflow for up to 10 s.
    const until = Date.now() + 10_000;
    summary.listed = false;
    while (!summary.listed && Date.now() < until) {
      for await (const wf of client.workflow.list({ pageSize: 100 })) {
        if (wf.workflowId === workflowId) {
          summary.listed = true;
          break;
        }
      }
      if (!summary.listed) await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    await connection.close();
  }

  // A token without the role to start workflows: the proxy refuses the call.
  const denied = await connect({ ...common, apiKey: env('TAP_DENIED_API_KEY') });
  try {
    await denied.client.workflow.start('GreetingWorkflow', {
      taskQueue,
      workflowId: `${workflowId}-denied`,
      args: ['nobody'],
    });
    summary.denied = null; // started although it should not have
  } catch (err) {
    summary.denied = describeError(err);
  } finally {
    await denied.connection.close();
  }
  return summary;
}

main().then(
  (summary) => {
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  },
  (err) => {
    process.stdout.write(`${JSON.stringify({ error: describeError(err), stack: String(err && err.stack) })}\n`);
    process.exitCode = 1;
  },
);
