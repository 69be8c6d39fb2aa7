"""The five-line client: report a workflow's steps to a running ``pbkv serve`` and read the
forecast of which agents it calls next.

    pbkv serve &                       # gRPC on 127.0.0.1:50151, dashboard on :8377
    python examples/client_quickstart.py
"""

from pbkv.service.client import PbkvClient

with PbkvClient("127.0.0.1:50151") as pbkv:
    pbkv.start_workflow("run-1", app="chatdev", task="build a snake game")
    pbkv.step_started("run-1", "Programmer")
    forecast = pbkv.step_finished("run-1", "Programmer", output_text="def main(): ...")
    print(forecast)
    pbkv.end_workflow("run-1")
