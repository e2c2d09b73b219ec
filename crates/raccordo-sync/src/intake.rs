//! What CRM change notifications say, read strictly (pure; the HTTP routes call these).
//!
//! HubSpot POSTs a JSON array of events (`subscriptionType` `contact.creation`,
//! `contact.propertyChange`, `contact.deletion`, `contact.merge`, `contact.restore`,
//! `contact.associationChange`, `contact.privacyDeletion`, the same for `company.*`, and
//! generic `object.*` with `objectTypeId` `0-1` / `0-2`). Zoho POSTs one notification per
//! change batch: `module`, `ids`, `operation`, the channel `token`. Both carry ids, not
//! data: the worker reads the records when it runs.

use raccordo_core::crm::{ObjectKind, System};
use serde_json::Value;

/// One record that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ObjectKind,
    pub origin: System,
    pub id: String,
    /// HubSpot merges: the ids merged into `id` (they no longer exist).
    pub merged: Vec<String>,
}

/// A located problem in a notification body: (JSON pointer, what is wrong).
pub type BodyError = (String, String);

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() && s.len() <= 64 => Some(s.clone()),
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// HubSpot's events; events about other objects are skipped (counted by the caller as the
/// difference in length).
pub fn hubspot_events(body: &[u8]) -> Result<(Vec<Change>, usize), Vec<BodyError>> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| vec![(String::new(), "the body is not valid JSON".to_string())])?;
    let Some(events) = value.as_array() else {
        return Err(vec![(
            String::new(),
            "expected a JSON array of events".into(),
        )]);
    };
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    let mut skipped = 0;
    for (i, e) in events.iter().enumerate() {
        let Some(kind_name) = e["subscriptionType"].as_str() else {
            errors.push((
                format!("/{i}/subscriptionType"),
                "must be a string such as `contact.creation`".into(),
            ));
            continue;
        };
        let (object, _action) = kind_name.split_once('.').unwrap_or((kind_name, ""));
        let kind = match (object, e["objectTypeId"].as_str()) {
            ("contact", _) | ("object", Some("0-1")) => ObjectKind::Contact,
            ("company", _) | ("object", Some("0-2")) => ObjectKind::Company,
            _ => {
                skipped += 1;
                continue;
            }
        };
        let merge = kind_name.ends_with(".merge");
        let id_field = if merge && !e["primaryObjectId"].is_null() {
            "primaryObjectId"
        } else {
            "objectId"
        };
        let Some(id) = id_text(&e[id_field]) else {
            errors.push((
                format!("/{i}/{id_field}"),
                "must be a record id (a positive integer)".into(),
            ));
            continue;
        };
        let merged = e["mergedObjectIds"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(id_text)
                    .filter(|m| *m != id)
                    .collect()
            })
            .unwrap_or_default();
        changes.push(Change {
            kind,
            origin: System::HubSpot,
            id,
            merged,
        });
    }
    if errors.is_empty() {
        Ok((changes, skipped))
    } else {
        Err(errors)
    }
}

/// A Zoho notification: its channel token (checked by the caller) and the changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZohoNotification {
    pub token: Option<String>,
    pub changes: Vec<Change>,
}

pub fn zoho_notification(body: &[u8]) -> Result<ZohoNotification, Vec<BodyError>> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| vec![(String::new(), "the body is not valid JSON".to_string())])?;
    if !value.is_object() {
        return Err(vec![(String::new(), "expected a JSON object".into())]);
    }
    let token = match &value["token"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        _ => return Err(vec![("/token".into(), "must be a string or null".into())]),
    };
    let kind = match value["module"].as_str() {
        Some("Contacts") => Some(ObjectKind::Contact),
        Some("Accounts") => Some(ObjectKind::Company),
        Some(_) => None,
        None => return Err(vec![("/module".into(), "must be a module name".into())]),
    };
    let Some(ids) = value["ids"].as_array() else {
        return Err(vec![(
            "/ids".into(),
            "must be an array of record ids".into(),
        )]);
    };
    let mut changes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let Some(id) = id_text(id) else {
            return Err(vec![(format!("/ids/{i}"), "must be a record id".into())]);
        };
        if let Some(kind) = kind {
            changes.push(Change {
                kind,
                origin: System::Zoho,
                id,
                merged: Vec::new(),
            });
        }
    }
    Ok(ZohoNotification { token, changes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hubspot_batches_become_changes() {
        let body = br#"[
            {"eventId":1,"subscriptionType":"contact.creation","objectId":123,"occurredAt":1},
            {"eventId":2,"subscriptionType":"company.propertyChange","objectId":"77","propertyName":"name"},
            {"eventId":3,"subscriptionType":"contact.merge","objectId":5,"primaryObjectId":5,"mergedObjectIds":[5,6,7]},
            {"eventId":4,"subscriptionType":"deal.creation","objectId":9},
            {"eventId":5,"subscriptionType":"object.propertyChange","objectTypeId":"0-1","objectId":10}
        ]"#;
        let (changes, skipped) = hubspot_events(body).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(changes.len(), 4);
        assert_eq!(changes[1].kind, ObjectKind::Company);
        assert_eq!(changes[2].merged, ["6", "7"]);
        assert_eq!(changes[3].id, "10");
    }

    #[test]
    fn malformed_events_are_named_by_pointer() {
        let errors = hubspot_events(
            br#"[{"subscriptionType":"contact.creation","objectId":-1},{"objectId":1}]"#,
        )
        .unwrap_err();
        assert_eq!(errors[0].0, "/0/objectId");
        assert_eq!(errors[1].0, "/1/subscriptionType");
        assert_eq!(hubspot_events(b"{}").unwrap_err()[0].0, "");
    }

    #[test]
    fn zoho_notifications_carry_ids_and_the_token() {
        let body = br#"{"server_time":1,"query_params":{},"module":"Contacts","resource_uri":"/crm/v2/Contacts","ids":["4876876000000412001"],"operation":"update","channel_id":"1000","token":"secret-token"}"#;
        let n = zoho_notification(body).unwrap();
        assert_eq!(n.token.as_deref(), Some("secret-token"));
        assert_eq!(n.changes[0].id, "4876876000000412001");
        assert_eq!(
            zoho_notification(br#"{"module":"Contacts","ids":[{}]}"#).unwrap_err()[0].0,
            "/ids/0"
        );
        let other = zoho_notification(br#"{"module":"Deals","ids":["1"],"token":null}"#).unwrap();
        assert!(other.changes.is_empty() && other.token.is_none());
    }

    proptest! {
        #[test]
        fn no_body_makes_intake_panic(body in proptest::collection::vec(any::<u8>(), 0..200), text in ".{0,200}") {
            let _ = hubspot_events(&body);
            let _ = zoho_notification(&body);
            let _ = hubspot_events(text.as_bytes());
            let _ = zoho_notification(text.as_bytes());
        }
    }
}
