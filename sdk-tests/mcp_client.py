"""Drives the hub's MCP server with the official Python MCP client.

  python mcp_client.py http URL TOKEN FLOW      streamable HTTP at URL (the hub's /mcp)
  python mcp_client.py stdio BINARY HUB TOKEN   `raccordo mcp` over stdio

Prints one JSON document of what it saw, for the Rust test to check.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def over_http(url, token, flow):
    seen = {}
    transport = streamable_http_client(
        url, http_client=create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    )
    async with Client(transport) as client:
        seen["server"] = client.server_info.name if client.server_info else None
        tools = await client.list_tools()
        seen["tools"] = sorted(t.name for t in tools.tools)
        flows = await client.call_tool("list_flows", {})
        seen["flows"] = [f["name"] for f in json.loads(text_of(flows))["flows"]]
        started = await client.call_tool("start_flow", {"flow": flow, "input": {"text": "Il servizio è ottimo, grazie!"}})
        seen["start_error"] = started.is_error
        run_id = json.loads(text_of(started)).get("run_id") if not started.is_error else None
        seen["run_id"] = run_id
        status = None
        for _ in range(200):
            run = await client.call_tool("get_flow_run", {"run_id": run_id})
            status = json.loads(text_of(run))["status"]
            if status != "running":
                break
            await asyncio.sleep(0.05)
        seen["run_status"] = status
        metrics = await client.call_tool("query_metrics", {})
        seen["metrics_error"] = metrics.is_error
        missing = await client.call_tool("start_flow", {"flow": "no-such-flow", "input": {}})
        seen["missing_flow"] = {"error": missing.is_error, "text": text_of(missing)}
    return seen


async def over_stdio(binary, hub, token):
    seen = {}
    params = StdioServerParameters(command=binary, args=["mcp", "--url", hub, "--token", token])
    async with Client(params) as client:
        tools = await client.list_tools()
        seen["tools"] = sorted(t.name for t in tools.tools)
        runs = await client.call_tool("list_flow_runs", {"limit": 5})
        seen["runs_error"] = runs.is_error
        seen["runs"] = len(json.loads(text_of(runs))["runs"]) if not runs.is_error else None
        # A read-only token cannot start a flow: the hub's answer comes back as a tool error.
        refused = await client.call_tool("start_flow", {"flow": "echo", "input": {}})
        seen["start_refused"] = {"error": refused.is_error, "text": text_of(refused)}
    return seen


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "http":
        print(json.dumps(asyncio.run(over_http(sys.argv[2], sys.argv[3], sys.argv[4]))))
    else:
        print(json.dumps(asyncio.run(over_stdio(sys.argv[2], sys.argv[3], sys.argv[4]))))
