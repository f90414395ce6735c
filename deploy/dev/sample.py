"""`make run`'s sample: one workflow whose input is encrypted with the dev codec key.

It connects through the proxy like any SDK client (mTLS with the dev client certificate and a dev
token), encrypts the input with `proxy.sdk_codec.EncryptionCodec` and the key `certs-dev` wrote
(`codec.key`, key id `dev`), starts the workflow without a worker (it stays Running, its input in
the history) and prints the Web UI link where the proxy's Codec Server shows the input decrypted.

    python deploy/dev/sample.py --certs certs-dev --address 127.0.0.1:7233 \
        --token "$TOKEN" --ui http://localhost:8233
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import TLSConfig

from proxy.dev.pki import DEV_CODEC_KEY_ID, DevBundle
from proxy.sdk_codec import EncryptionCodec

# What the Web UI shows once the Codec Server decrypted it (stored encrypted in Temporal).
SAMPLE_INPUT = {"customer": "Ada Lovelace", "card": "4111 1111 1111 1111", "amount": 42}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--certs", default="certs-dev", help="the certs-dev directory")
    p.add_argument("--address", default="127.0.0.1:7233", help="the proxy")
    p.add_argument("--server-name", default="proxy.test", help="the proxy certificate's name")
    p.add_argument("--token", default=os.environ.get("TAP_DEV_TOKEN", ""), help="a dev token")
    p.add_argument("--namespace", default="default")
    p.add_argument("--ui", default="http://localhost:8233", help="the Web UI's base URL")
    p.add_argument("--workflow-id", default="", help="default: sample-<random>")
    return p.parse_args(argv)


async def start(args: argparse.Namespace) -> tuple[str, str]:
    bundle = DevBundle.at(Path(args.certs))
    key = base64.b64decode(bundle.codec_key.read_text().strip(), validate=True)
    codec = EncryptionCodec({DEV_CODEC_KEY_ID: key}, encrypt_key_id=DEV_CODEC_KEY_ID)
    client = await Client.connect(
        args.address,
        namespace=args.namespace,
        tls=TLSConfig(
            server_root_ca_cert=bundle.ca_cert.read_bytes(),
            client_cert=bundle.client_cert.read_bytes(),
            client_private_key=bundle.client_key.read_bytes(),
            domain=args.server_name,
        ),
        api_key=args.token or None,
        data_converter=dataclasses.replace(DataConverter.default, payload_codec=codec),
    )
    workflow_id = args.workflow_id or f"sample-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        "SampleWorkflow",
        SAMPLE_INPUT,
        id=workflow_id,
        task_queue="sample",  # no worker polls it: the workflow waits, its input stays visible
        execution_timeout=timedelta(hours=8),
        rpc_timeout=timedelta(seconds=10),
    )
    return workflow_id, handle.result_run_id or ""


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    workflow_id, run_id = asyncio.run(start(args))
    link = f"{args.ui.rstrip('/')}/namespaces/{args.namespace}/workflows/{workflow_id}/{run_id}"
    print(f"Sample workflow {workflow_id} started; its input is stored encrypted (key id dev).")
    print(f"Open {link}/history : its Input shows {json.dumps(SAMPLE_INPUT)}, decrypted.")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    # os._exit: the SDK's native threads can abort the interpreter at exit after the work is
    # done (docs: environment facts); the result is already printed.
    os._exit(main(sys.argv[1:]))
