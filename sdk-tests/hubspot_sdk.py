"""Drives the HubSpot sandbox with the official `hubspot-api-client`, unchanged.

Environment: SANDBOX_URL, SANDBOX_TOKEN, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET and
WEBHOOK_PORT (the sandbox was started with --webhook-url http://127.0.0.1:WEBHOOK_PORT/hook).
Exits non-zero on the first failed check.
"""
import http.server
import json
import os
import threading
import time
import urllib.parse
import urllib.request

import hubspot
from hubspot import HubSpot
from hubspot.crm.contacts import (
    ApiException,
    BatchInputSimplePublicObjectBatchInputForCreate,
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchReadInputSimplePublicObjectId,
    PublicObjectSearchRequest,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from hubspot.crm.companies import SimplePublicObjectInputForCreate as CompanyInput
from hubspot.crm.contacts.exceptions import NotFoundException
from hubspot.utils.signature import Signature

url, token = os.environ["SANDBOX_URL"], os.environ["SANDBOX_TOKEN"]
client_id, client_secret = os.environ["SANDBOX_CLIENT_ID"], os.environ["SANDBOX_CLIENT_SECRET"]
hook_port = int(os.environ["WEBHOOK_PORT"])
hook_url = f"http://127.0.0.1:{hook_port}/hook"
checks = 0
run = str(int(time.time() * 1000))


def check(condition, what):
    global checks
    if not condition:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


# A webhook receiver that checks every request with the SDK's own signature helper.
received, bad = [], []


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"])).decode()
        ok = Signature.is_valid(
            signature=self.headers["x-hubspot-signature-v3"], client_secret=client_secret,
            request_body=body, http_uri=hook_url, http_method="POST",
            signature_version="v3", timestamp=self.headers["x-hubspot-request-timestamp"])
        (received if ok else bad).extend(json.loads(body))
        self.send_response(204 if ok else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", hook_port), Hook)
threading.Thread(target=server.serve_forever, daemon=True).start()

api = HubSpot(access_token=token, host=url)
contacts = api.crm.contacts

# Basic calls.
email = f"giulia.conti.{run}@example.it"
created = contacts.basic_api.create(SimplePublicObjectInputForCreate(properties={"email": email, "firstname": "Giulia", "lastname": "Conti"}))
check(created is not None and created.id.isdigit(), "create answers 201 with an object")
check(created.properties["email"] == email and created.created_at is not None and created.archived is False, "created object shape")
got = contacts.basic_api.get_by_id(created.id, properties=["email", "firstname"])
check(got.properties["firstname"] == "Giulia", "get_by_id with repeated properties")
check(contacts.basic_api.get_by_id(email, id_property="email").id == created.id, "lookup by idProperty=email")
updated = contacts.basic_api.update(created.id, SimplePublicObjectInput(properties={"firstname": "Maria", "lifecyclestage": "customer"}))
check(updated.properties["firstname"] == "Maria" and updated.updated_at >= created.updated_at, "PATCH update")

# What connectors read before any record: properties with their options, owners,
# pipelines, schemas; property history; the v4 batch read of associations.
stage = next(p for p in api.crm.properties.core_api.get_all("contacts").results if p.name == "lifecyclestage")
check(stage.type == "enumeration" and any(o.value == "customer" for o in stage.options), "properties API with options")
check(api.crm.owners.owners_api.get_page().results[0].email, "owners API")
check(api.crm.pipelines.pipelines_api.get_all("deals").results[0].id == "default", "pipelines API")
check(api.crm.schemas.core_api.get_all().results == [], "schemas API")
history = contacts.basic_api.get_by_id(created.id, properties_with_history=["firstname"]).properties_with_history["firstname"]
check([h.value for h in history] == ["Maria", "Giulia"], f"property history, newest first: {history}")
from hubspot.crm.associations.v4 import BatchInputPublicFetchAssociationsBatchRequest, PublicFetchAssociationsBatchRequest
read = api.crm.associations.v4.batch_api.get_page("contacts", "companies", BatchInputPublicFetchAssociationsBatchRequest(inputs=[PublicFetchAssociationsBatchRequest(id=created.id)]))
check(read.status == "COMPLETE", "v4 batch read of associations")

try:
    contacts.basic_api.create(SimplePublicObjectInputForCreate(properties={"email": email, "firstname": "Copia"}))
    check(False, "a duplicate email is refused")
except ApiException as e:
    body = json.loads(e.body)
    check(e.status == 409 and body["category"] == "CONFLICT", f"409 CONFLICT: {e.body}")
    check(body["message"] == f"Contact already exists. Existing ID: {created.id}", f"HubSpot's message: {body['message']}")

try:
    contacts.basic_api.create(SimplePublicObjectInputForCreate(properties={"email": "not-an-email", "colour": "blue"}))
    check(False, "bad properties are refused")
except ApiException as e:
    check(e.status == 400 and json.loads(e.body)["category"] == "VALIDATION_ERROR", f"400 VALIDATION_ERROR: {e.body}")

# Paging: two pages do not overlap; get_all stops (no paging on the last page).
first = contacts.basic_api.get_page(limit=5)
second = contacts.basic_api.get_page(limit=5, after=first.paging.next.after)
ids1, ids2 = {c.id for c in first.results}, {c.id for c in second.results}
check(len(ids1) == 5 and len(ids2) == 5 and not ids1 & ids2, "after paging")
everyone = contacts.get_all()
check(len(everyone) >= 100 and len({c.id for c in everyone}) == len(everyone), f"get_all pages through {len(everyone)} contacts")

# Search.
found = contacts.search_api.do_search(PublicObjectSearchRequest(
    filter_groups=[{"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}], properties=["email", "lifecyclestage"], limit=10))
check(found.total == 1 and found.results[0].id == created.id and found.results[0].properties["lifecyclestage"] == "customer", "search by email")
milano = contacts.search_api.do_search(PublicObjectSearchRequest(
    filter_groups=[{"filters": [{"propertyName": "city", "operator": "IN", "values": ["Milano", "Roma"]}]}], sorts=["-createdate"], properties=["city"], limit=200))
check(all(r.properties["city"] in ("Milano", "Roma") for r in milano.results), "IN filter")
try:
    contacts.search_api.do_search(PublicObjectSearchRequest(filter_groups=[{"filters": []}] * 6, limit=10))
    check(False, "six filter groups are refused")
except ApiException as e:
    check(e.status == 400, "more than 5 filter groups: 400")

# Batches: create answers 201, read/upsert 200, and 100 inputs at most.
inputs = [{"properties": {"email": f"batch{i}.{run}@example.it", "firstname": f"Batch{i}"}} for i in range(3)]
batch = contacts.batch_api.create(BatchInputSimplePublicObjectBatchInputForCreate(inputs=inputs))
check(batch is not None and batch.status == "COMPLETE" and len(batch.results) == 3, "batch create (201)")
read = contacts.batch_api.read(BatchReadInputSimplePublicObjectId(inputs=[{"id": r.id} for r in batch.results], properties=["email"]))
check(sorted(r.properties["email"] for r in read.results) == sorted(i["properties"]["email"] for i in inputs), "batch read")
fresh = f"nuovo.{run}@example.it"
up = contacts.batch_api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=[
    {"id": email, "idProperty": "email", "properties": {"city": "Torino"}},
    {"id": fresh, "idProperty": "email", "properties": {"firstname": "Nuovo"}}]))
news = {r.properties.get("email"): r.new for r in up.results}
check(news.get(email) is False and news.get(fresh) is True, f"upsert reports new: {news}")
try:
    contacts.batch_api.create(BatchInputSimplePublicObjectBatchInputForCreate(inputs=[{"properties": {"firstname": "x"}}] * 101))
    check(False, "101 inputs are refused")
except ApiException as e:
    check(e.status == 400, "batch limit 100")

# Associations (v4) and companies.
company = api.crm.companies.basic_api.create(CompanyInput(properties={"name": f"Ceramiche Prova {run} S.r.l.", "domain": f"prova{run}.it", "city": "Faenza"}))
check(company is not None and company.properties["name"].startswith("Ceramiche"), "company create")
api.crm.associations.v4.basic_api.create_default("contacts", created.id, "companies", company.id)
linked = api.crm.associations.v4.basic_api.get_page("contacts", created.id, "companies")
check([str(r.to_object_id) for r in linked.results] == [company.id], "default association listed")
check(linked.results[0].association_types[0].type_id == 279, "contact→company type 279")
other = api.crm.companies.basic_api.create(CompanyInput(properties={"name": f"Officine Prova {run} S.p.A."}))
labelled = api.crm.associations.v4.basic_api.create("companies", other.id, "contacts", created.id,
                                                    [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 280}])
check(labelled is not None and str(labelled.to_object_id) == created.id, "labelled association (201)")
api.crm.associations.v4.basic_api.archive("companies", other.id, "contacts", created.id)
linked = api.crm.associations.v4.basic_api.get_page("contacts", created.id, "companies")
check([str(r.to_object_id) for r in linked.results] == [company.id], "association archived")

# Rate-limit headers and 429.
_, status, headers = contacts.basic_api.get_page_with_http_info(limit=1)
check(status == 200 and headers.get("X-HubSpot-RateLimit-Max") and headers.get("X-HubSpot-RateLimit-Interval-Milliseconds") == "10000", f"rate-limit headers: {dict(headers)}")


def knobs(patch):
    req = urllib.request.Request(url + "/_sandbox/knobs", data=json.dumps(patch).encode(), method="PATCH")
    urllib.request.urlopen(req).read()


knobs({"throttle_rate": 1.0})
try:
    contacts.basic_api.get_page(limit=1)
    check(False, "throttled")
except ApiException as e:
    check(e.status == 429 and json.loads(e.body)["policyName"] == "TEN_SECONDLY_ROLLING", f"429 body: {e.body}")
finally:
    knobs({"throttle_rate": 0.0})

# Archive: then the object reads as 404.
contacts.basic_api.archive(created.id)
try:
    contacts.basic_api.get_by_id(created.id)
    check(False, "archived contacts are gone")
except NotFoundException as e:
    check(e.status == 404 and json.loads(e.body)["category"] == "OBJECT_NOT_FOUND", "404 after archive")

# OAuth: authorization code, then refresh after the access token expired.
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None


opener = urllib.request.build_opener(NoRedirect)
try:
    opener.open(url + "/oauth/authorize?" + urllib.parse.urlencode({"client_id": client_id, "redirect_uri": "http://localhost/cb", "scope": "crm.objects.contacts.read"}))
    check(False, "authorize redirects")
except urllib.error.HTTPError as e:
    location = e.headers["location"]
code = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)["code"][0]
tokens = api.oauth.tokens_api.create(grant_type="authorization_code", code=code, redirect_uri="http://localhost/cb", client_id=client_id, client_secret=client_secret)
check(tokens.access_token and tokens.refresh_token and tokens.expires_in == 1800, "authorization_code grant")
oauth = HubSpot(access_token=tokens.access_token, host=url)
check(len(oauth.crm.contacts.basic_api.get_page(limit=2).results) == 2, "OAuth access token works")
urllib.request.urlopen(urllib.request.Request(url + "/_sandbox/tokens/expire", method="POST")).read()
try:
    oauth.crm.contacts.basic_api.get_page(limit=1)
    check(False, "expired token refused")
except ApiException as e:
    check(e.status == 401 and json.loads(e.body)["category"] == "EXPIRED_AUTHENTICATION", f"expired: {e.body}")
again = api.oauth.tokens_api.create(grant_type="refresh_token", refresh_token=tokens.refresh_token, client_id=client_id, client_secret=client_secret)
check(len(HubSpot(access_token=again.access_token, host=url).crm.contacts.basic_api.get_page(limit=1).results) == 1, "refreshed token works")
try:
    HubSpot(access_token="wrong", host=url).crm.contacts.basic_api.get_page(limit=1)
    check(False, "unknown token refused")
except ApiException as e:
    check(e.status == 401 and json.loads(e.body)["category"] == "INVALID_AUTHENTICATION", "401 INVALID_AUTHENTICATION")

# Webhooks: creation, property change and deletion of our contact, correctly signed.
deadline = time.time() + 20
want = {("contact.creation", int(created.id)), ("contact.propertyChange", int(created.id)), ("contact.deletion", int(created.id))}
while time.time() < deadline and not want <= {(e["subscriptionType"], e["objectId"]) for e in received}:
    time.sleep(0.2)
seen = {(e["subscriptionType"], e["objectId"]) for e in received}
check(want <= seen, f"webhooks for the contact's life: {sorted(want - seen)} missing")
check(not bad, f"every webhook passed Signature.is_valid v3 ({len(bad)} failed)")
change = next(e for e in received if e["subscriptionType"] == "contact.propertyChange" and e["objectId"] == int(created.id) and e["propertyName"] == "firstname")
check(change["propertyValue"] == "Maria", "propertyChange carries the new value")
server.shutdown()
print(f"hubspot-api-client {hubspot.__version__ if hasattr(hubspot, '__version__') else '12'}: {checks} checks passed")
