"""Drives the Zoho CRM sandbox with the official `zohocrmsdk8-0`, unchanged.

Environment: SANDBOX_URL, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_REFRESH_TOKEN,
NOTIFY_PORT (a free port for the notification receiver). Exits non-zero on the first failed
check.
"""
import http.server
import json
import os
import tempfile
import threading
import time
import urllib.request

from zohocrmsdk.src.com.zoho.api.authenticator.oauth_token import OAuthToken
from zohocrmsdk.src.com.zoho.api.authenticator.store.token_store import TokenStore
from zohocrmsdk.src.com.zoho.crm.api import Initializer, ParameterMap
from zohocrmsdk.src.com.zoho.crm.api.dc.data_center import DataCenter
from zohocrmsdk.src.com.zoho.crm.api.exception import SDKException
from zohocrmsdk.src.com.zoho.crm.api.record import (
    ActionWrapper, APIException, BodyWrapper, GetRecordsParam, Record, RecordOperations,
    ResponseWrapper, SearchRecordsParam, SuccessResponse,
)
from zohocrmsdk.src.com.zoho.crm.api.sdk_config import SDKConfig

url = os.environ["SANDBOX_URL"]
client_id, client_secret = os.environ["SANDBOX_CLIENT_ID"], os.environ["SANDBOX_CLIENT_SECRET"]
refresh_token = os.environ["SANDBOX_REFRESH_TOKEN"]
notify_port = int(os.environ["NOTIFY_PORT"])
checks = 0
run = str(int(time.time() * 1000))


def check(condition, what):
    global checks
    if not condition:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


class MemoryStore(TokenStore):
    """Never answers find_token, so every initialise really runs the grant."""

    def __init__(self):
        self.tokens = []

    def find_token(self, token):
        return None

    def save_token(self, token):
        self.tokens.append(token)

    def delete_token(self, id):
        pass

    def get_tokens(self):
        return self.tokens

    def delete_tokens(self):
        self.tokens = []

    def find_token_by_id(self, id):
        return None


def initialise(secret):
    environment = DataCenter.Environment(url, url + "/oauth/v2/token", url)
    token = OAuthToken(client_id=client_id, client_secret=secret, refresh_token=refresh_token)
    Initializer.initialize(environment=environment, token=token, store=MemoryStore(),
                           sdk_config=SDKConfig(auto_refresh_fields=False, pick_list_validation=False),
                           resource_path=tempfile.mkdtemp())


# A wrong client secret is refused by the token endpoint with Zoho's error word.
try:
    initialise("wrong-secret")
    check(False, "a wrong client secret is refused")
except SDKException as e:
    check("invalid_client_secret" in str(e), f"token error: {e}")

initialise(client_secret)
contacts = RecordOperations("Contacts")

# A notification receiver, and a watch channel on Contacts.
notified = []


class Notify(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        notified.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", notify_port), Notify)
threading.Thread(target=server.serve_forever, daemon=True).start()
access = Initializer.get_initializer().token.get_access_token()
watch = urllib.request.Request(url + "/crm/v8/actions/watch", method="POST", headers={"Authorization": "Zoho-oauthtoken " + access},
                               data=json.dumps({"watch": [{"channel_id": 1000000068001, "events": ["Contacts.all"], "token": "canale-segreto",
                                                           "notify_url": f"http://127.0.0.1:{notify_port}/zoho?tenant=demo"}]}).encode())
answer = json.loads(urllib.request.urlopen(watch).read())
check(answer["watch"][0]["code"] == "SUCCESS", f"watch enabled: {answer}")
# An expiry beyond a week silently becomes one hour (Zoho's rule since API v4).
far = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 30 * 86400))
too_long = urllib.request.Request(url + "/crm/v8/actions/watch", method="POST", headers={"Authorization": "Zoho-oauthtoken " + access},
                                  data=json.dumps({"watch": [{"channel_id": 1000000068002, "events": ["Accounts.create"], "channel_expiry": far,
                                                              "notify_url": f"http://127.0.0.1:{notify_port}/other"}]}).encode())
expiry = json.loads(urllib.request.urlopen(too_long).read())["watch"][0]["details"]["events"][0]["channel_expiry"]
hours = (time.mktime(time.strptime(expiry[:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(time.gmtime())) / 3600
check(0.9 < hours < 1.1, f"a 30-day expiry became one hour: {expiry}")

# Insert: 201 with Zoho's success entry.
email = f"luca.greco.{run}@example.it"
body = BodyWrapper()
record = Record()
record.add_key_value("Last_Name", "Greco")
record.add_key_value("First_Name", "Luca")
record.add_key_value("Email", email)
body.set_data([record])
body.set_trigger([])
response = contacts.create_records(body)
check(response is not None and response.get_status_code() == 201, f"insert answers 201: {response and response.get_status_code()}")
entry = response.get_object().get_data()[0]
check(isinstance(entry, SuccessResponse) and entry.get_status().get_value() == "success", "insert success entry")
check(entry.get_message().get_value() == "record added", "message `record added`")
contact_id = int(entry.get_details()["id"])

# Missing mandatory field: 400 with MANDATORY_NOT_FOUND.
bad = BodyWrapper()
incomplete = Record()
incomplete.add_key_value("First_Name", "Senza Cognome")
bad.set_data([incomplete])
response = contacts.create_records(bad)
entry = response.get_object().get_data()[0]
check(response.get_status_code() == 400 and isinstance(entry, APIException), "400 for a missing Last_Name")
check(entry.get_code().get_value() == "MANDATORY_NOT_FOUND" and entry.get_details()["api_name"] == "Last_Name", "MANDATORY_NOT_FOUND names the field")

# Duplicate unique field: DUPLICATE_DATA.
dup = BodyWrapper()
again = Record()
again.add_key_value("Last_Name", "Greco")
again.add_key_value("Email", email)
dup.set_data([again])
entry = contacts.create_records(dup).get_object().get_data()[0]
check(isinstance(entry, APIException) and entry.get_code().get_value() == "DUPLICATE_DATA", "DUPLICATE_DATA on the same Email")
check(str(entry.get_details()["duplicate_record"].get_id()) == str(contact_id), "duplicate_record points at the original")

# Get, update, search, upsert.
got = contacts.get_record(contact_id)
record = got.get_object().get_data()[0]
check(record.get_id() == contact_id and record.get_key_value("Email") == email, "get_record")
check(record.get_key_value("Modified_Time") is not None, "Modified_Time parses as a date-time")
change = BodyWrapper()
edit = Record()
edit.add_key_value("Last_Name", "Greco")
edit.add_key_value("Mailing_City", "Bari")
change.set_data([edit])
response = contacts.update_record(contact_id, change)
entry = response.get_object().get_data()[0]
check(response.get_status_code() == 200 and entry.get_message().get_value() == "record updated", "update_record")

params = ParameterMap()
params.add(SearchRecordsParam.email, email)
found = contacts.search_records(params)
check(found.get_status_code() == 200 and found.get_object().get_data()[0].get_id() == contact_id, "search by email")
params = ParameterMap()
params.add(SearchRecordsParam.criteria, f"((Email:equals:{email})and(Mailing_City:equals:Bari))")
check(contacts.search_records(params).get_object().get_data()[0].get_id() == contact_id, "search by criteria")
params = ParameterMap()
params.add(SearchRecordsParam.email, f"nessuno.{run}@example.it")
check(contacts.search_records(params).get_status_code() == 204, "no match: 204")

up = BodyWrapper()
existing, fresh = Record(), Record()
existing.add_key_value("Last_Name", "Greco")
existing.add_key_value("Email", email)
existing.add_key_value("Phone", "+39 333 1234567")
fresh.add_key_value("Last_Name", "Bruno")
fresh.add_key_value("Email", f"sara.bruno.{run}@example.it")
up.set_data([existing, fresh])
up.set_duplicate_check_fields(["Email"])
entries = contacts.upsert_records(up).get_object().get_data()
actions = [(e.get_action().get_value(), e.get_duplicate_field()) for e in entries]
check(actions == [("update", "Email"), ("insert", None)], f"upsert actions: {actions}")

# List with paging; `fields` is mandatory.
params = ParameterMap()
params.add(GetRecordsParam.fields, "Last_Name,Email")
params.add(GetRecordsParam.per_page, 2)
params.add(GetRecordsParam.page, 1)
page = contacts.get_records(params)
check(page.get_status_code() == 200 and len(page.get_object().get_data()) == 2, "get_records page of 2")
check(page.get_object().get_info().get_more_records() is True, "more_records")
response = contacts.get_records(ParameterMap())
check(response.get_status_code() == 400 and response.get_object().get_code().get_value() == "REQUIRED_PARAM_MISSING", "fields is mandatory")

# Delete, then the record is gone.
response = contacts.delete_record(contact_id)
check(response.get_object().get_data()[0].get_message().get_value() == "record deleted", "delete_record")
check(contacts.get_record(contact_id).get_status_code() == 204, "a deleted record is not returned")

# Notifications for insert, update and delete arrived with the channel token.
deadline = time.time() + 20
while time.time() < deadline and not {"insert", "update", "delete"} <= {n["operation"] for n in notified if str(contact_id) in n["ids"]}:
    time.sleep(0.2)
mine = [n for n in notified if str(contact_id) in n["ids"]]
check({"insert", "update", "delete"} <= {n["operation"] for n in mine}, f"callbacks: {[n['operation'] for n in mine]}")
check(all(n["token"] == "canale-segreto" and n["channel_id"] == "1000000068001" and n["query_params"] == {"tenant": "demo"} for n in mine), "callback payload")
server.shutdown()

# A bad access token: 401 INVALID_TOKEN.
bad_call = urllib.request.Request(url + "/crm/v8/Contacts?fields=Email", headers={"Authorization": "Zoho-oauthtoken 1000.wrong"})
try:
    urllib.request.urlopen(bad_call)
    check(False, "a bad token is refused")
except urllib.error.HTTPError as e:
    check(e.code == 401 and json.loads(e.read())["code"] == "INVALID_TOKEN", "401 INVALID_TOKEN")
print(f"zohocrmsdk8-0: {checks} checks passed")
