"""A Flower app that only echoes: the ServerApp sends every SuperNode a payload of each size, several times, and
records how long each exchange took. What it measures is Flower's own cost per message (benchmarks/deployment.py)."""

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client_app = ClientApp()
server_app = ServerApp()


@client_app.query("echo")
def echo(message: Message, context: Context) -> Message:
    return Message(RecordDict({"payload": message.content.array_records["payload"]}), reply_to=message)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < int(context.run_config["nodes"]):
        time.sleep(0.5)
        nodes = sorted(grid.get_node_ids())
    timings = []
    for size in json.loads(str(context.run_config["sizes"])):
        payload = ArrayRecord({"x": Array.from_numpy_ndarray(np.zeros(size // 4, np.float32))})
        for _ in range(int(context.run_config["repeats"])):
            started = time.perf_counter()
            messages = [Message(RecordDict({"payload": payload}), dst_node_id=n, message_type="query.echo")
                        for n in nodes]
            pending = set(grid.push_messages(messages))
            while pending:
                pending -= {m.metadata.reply_to_message_id for m in grid.pull_messages(list(pending))}
                time.sleep(0.02)
            timings.append({"bytes": size, "seconds": time.perf_counter() - started})
    with open(str(context.run_config["out"]), "w") as file:
        json.dump(timings, file)
