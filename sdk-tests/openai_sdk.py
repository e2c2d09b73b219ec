"""Drives the AI sandbox with the official `openai` package, unchanged.

Environment: SANDBOX_URL (http://127.0.0.1:PORT), SANDBOX_KEY. Exits non-zero on the first
failed check.
"""
import json
import os
import urllib.request

import openai
from openai import OpenAI

url, key = os.environ["SANDBOX_URL"], os.environ["SANDBOX_KEY"]
client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
checks = 0


def check(condition, what):
    global checks
    if not condition:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


models = client.models.list()
ids = [m.id for m in models.data]
check("raccordo-sandbox-1" in ids, f"models.list names the sandbox model: {ids}")

schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sentiment", "priority", "summary"],
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 80},
    },
}
messages = [
    {"role": "system", "content": "Classifica il ticket di assistenza."},
    {"role": "user", "content": "Il portale non funziona e voglio un rimborso, terzo reclamo."},
]
fmt = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": schema, "strict": True}}
first = client.chat.completions.create(model="raccordo-sandbox-1", messages=messages, response_format=fmt)
second = client.chat.completions.create(model="raccordo-sandbox-1", messages=messages, response_format=fmt)
content = first.choices[0].message.content
check(content == second.choices[0].message.content, "the same input gives the same answer")
answer = json.loads(content)
check(set(answer) == {"sentiment", "priority", "summary"}, f"exactly the schema's keys: {answer}")
check(answer["sentiment"] == "negative", f"a complaint reads as negative: {answer}")
check(1 <= answer["priority"] <= 5 and len(answer["summary"]) <= 80, f"bounds honoured: {answer}")
check(first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens > 0, "usage adds up")
check(first.choices[0].finish_reason == "stop" and first.object == "chat.completion", "completion shape")

plain = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Grazie, servizio ottimo!"}])
check("positive" in plain.choices[0].message.content, f"plain text answer: {plain.choices[0].message.content}")

try:
    OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    check(False, "a wrong key is refused")
except openai.AuthenticationError as e:
    check(e.status_code == 401 and e.code == "invalid_api_key", f"401 invalid_api_key: {e}")

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    check(False, "an unknown model is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.param == "model", f"400 naming the model param: {e}")

# Throttle every call: the SDK raises RateLimitError and sees Retry-After.
def knobs(patch):
    req = urllib.request.Request(url + "/_sandbox/knobs", data=json.dumps(patch).encode(), method="PATCH")
    urllib.request.urlopen(req).read()

knobs({"throttle_rate": 1.0})
try:
    client.models.list()
    check(False, "the throttled call fails")
except openai.RateLimitError as e:
    check(e.status_code == 429 and e.response.headers.get("retry-after") == "1", "429 with Retry-After")
finally:
    knobs({"throttle_rate": 0.0})
print(f"openai {openai.__version__}: {checks} checks passed")
