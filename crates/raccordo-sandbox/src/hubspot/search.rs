//! CRM v3 search: filter groups, operators, sorts, paging and the 10 000-result cap.

use super::*;

/// A property value as a number when it is one (or an ISO date, as epoch ms).
pub(super) fn numeric(v: &str) -> Option<f64> {
    v.parse::<f64>().ok().or_else(|| {
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as f64)
    })
}

pub(super) fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    match (numeric(a), numeric(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.to_lowercase().cmp(&b.to_lowercase()),
    }
}

pub(super) fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether `filter` holds for `o`; `Err` names what is wrong with the filter.
pub(super) fn matches(o: &Object, filter: &Value) -> Result<bool, String> {
    let name = filter["propertyName"]
        .as_str()
        .ok_or("every filter needs a propertyName")?;
    let op = filter["operator"]
        .as_str()
        .ok_or("every filter needs an operator")?;
    let actual = o.properties.get(name).filter(|v| !v.is_empty());
    let value = value_text(&filter["value"]);
    let need = || {
        value
            .clone()
            .ok_or_else(|| format!("operator {op} needs a value"))
    };
    use std::cmp::Ordering::*;
    Ok(match op {
        "HAS_PROPERTY" => actual.is_some(),
        "NOT_HAS_PROPERTY" => actual.is_none(),
        "EQ" => {
            actual.is_some_and(|a| compare(a, &need().unwrap_or_default()) == Equal)
                && value.is_some()
        }
        "NEQ" => actual.is_none_or(|a| compare(a, &need().unwrap_or_default()) != Equal),
        "LT" | "LTE" | "GT" | "GTE" => {
            let v = need()?;
            let wanted: &[std::cmp::Ordering] = match op {
                "LT" => &[Less],
                "LTE" => &[Less, Equal],
                "GT" => &[Greater],
                _ => &[Greater, Equal],
            };
            actual.is_some_and(|a| wanted.contains(&compare(a, &v)))
        }
        "BETWEEN" => {
            let low = need()?;
            let high =
                value_text(&filter["highValue"]).ok_or("BETWEEN needs value and highValue")?;
            actual.is_some_and(|a| compare(a, &low) != Less && compare(a, &high) != Greater)
        }
        "IN" | "NOT_IN" => {
            let values: Vec<String> = filter["values"]
                .as_array()
                .ok_or(format!("{op} needs values"))?
                .iter()
                .filter_map(value_text)
                .collect();
            let inside = actual.is_some_and(|a| values.iter().any(|v| compare(a, v) == Equal));
            if op == "IN" { inside } else { !inside }
        }
        "CONTAINS_TOKEN" | "NOT_CONTAINS_TOKEN" => {
            let token = need()?.to_lowercase();
            let hit = actual.is_some_and(|a| {
                let a = a.to_lowercase();
                if token.contains('*') {
                    let parts: Vec<&str> = token.split('*').filter(|p| !p.is_empty()).collect();
                    parts.iter().all(|p| a.contains(p))
                } else {
                    a.split(|c: char| !c.is_alphanumeric() && c != '@' && c != '.')
                        .any(|w| w == token)
                        || a == token
                }
            });
            if op == "CONTAINS_TOKEN" { hit } else { !hit }
        }
        other => return Err(format!("Unknown operator {other}")),
    })
}

pub(super) async fn search(
    State(hs): State<Arc<HubSpot>>,
    Admitted(h): Admitted<true>,
    ObjectKind(kind): ObjectKind,
    body: Bytes,
) -> Response {
    let input = attempt!(parse_json(&body));
    let groups = input["filterGroups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if groups.len() > 5 {
        return validation(&format!(
            "There were {} filter groups, the maximum is 5",
            groups.len()
        ));
    }
    let mut total_filters = 0;
    for (i, g) in groups.iter().enumerate() {
        let n = g["filters"].as_array().map_or(0, Vec::len);
        if n > 10 {
            return validation(&format!(
                "filterGroups[{i}] has {n} filters, the maximum is 10"
            ));
        }
        total_filters += n;
    }
    if total_filters > 25 {
        return validation(&format!(
            "There were {total_filters} filters in all, the maximum is 25"
        ));
    }
    let limit = input["limit"].as_u64().unwrap_or(10) as usize;
    if !(1..=SEARCH_PAGE_LIMIT).contains(&limit) {
        return validation(&format!("limit must be between 1 and {SEARCH_PAGE_LIMIT}"));
    }
    let after: usize = match &input["after"] {
        Value::Null => 0,
        v => match value_text(v).and_then(|s| s.parse().ok()) {
            Some(a) => a,
            None => return validation("after must be a paging cursor returned by this API"),
        },
    };
    if after + limit > SEARCH_RESULT_CAP {
        return validation(&format!(
            "The search API returns at most {SEARCH_RESULT_CAP} results; page past that is not possible"
        ));
    }
    let properties: Option<Vec<String>> = input["properties"]
        .as_array()
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        });
    let query = input["query"].as_str().map(str::to_lowercase);
    let sorts: Vec<(String, bool)> = input["sorts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| match s {
            Value::String(s) => Some(match s.strip_prefix('-') {
                Some(p) => (p.to_string(), true),
                None => (s.clone(), false),
            }),
            Value::Object(_) => Some((
                s["propertyName"].as_str()?.to_string(),
                s["direction"].as_str() == Some("DESCENDING"),
            )),
            _ => None,
        })
        .collect();
    let store = hs.store.lock().unwrap_or_else(|p| p.into_inner());
    let mut hits: Vec<&Object> = Vec::new();
    for o in store
        .objects
        .get(&kind)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|o| o.archived_at.is_none())
    {
        // Top-level `filters` (older clients send them outside `filterGroups`) must all
        // hold too: ignoring them would answer records the client did not ask for.
        let mut top_ok = true;
        for f in input["filters"].as_array().into_iter().flatten() {
            match matches(o, f) {
                Ok(true) => {}
                Ok(false) => {
                    top_ok = false;
                    break;
                }
                Err(e) => return validation(&e),
            }
        }
        if !top_ok {
            continue;
        }
        let mut group_ok = groups.is_empty();
        for g in &groups {
            let mut all = true;
            for f in g["filters"].as_array().into_iter().flatten() {
                match matches(o, f) {
                    Ok(true) => {}
                    Ok(false) => {
                        all = false;
                        break;
                    }
                    Err(e) => return validation(&e),
                }
            }
            if all {
                group_ok = true;
                break;
            }
        }
        let query_ok = query.as_ref().is_none_or(|q| {
            [
                "email",
                "firstname",
                "lastname",
                "phone",
                "name",
                "domain",
                "company",
            ]
            .iter()
            .any(|p| {
                o.properties
                    .get(*p)
                    .is_some_and(|v| v.to_lowercase().contains(q.as_str()))
            })
        });
        if group_ok && query_ok {
            hits.push(o);
        }
    }
    hits.sort_by(|a, b| {
        for (prop, desc) in &sorts {
            let (x, y) = (
                a.properties.get(prop).map_or("", String::as_str),
                b.properties.get(prop).map_or("", String::as_str),
            );
            let ord = compare(x, y);
            if ord != std::cmp::Ordering::Equal {
                return if *desc { ord.reverse() } else { ord };
            }
        }
        a.id.cmp(&b.id)
    });
    let total = hits.len();
    let page: Vec<Value> = hits
        .iter()
        .skip(after)
        .take(limit)
        .map(|o| render(&store, kind, o, properties.as_deref(), None))
        .collect();
    let mut body = json!({ "total": total, "results": page });
    if after + limit < total.min(SEARCH_RESULT_CAP) {
        let next = (after + limit).to_string();
        body["paging"] = json!({ "next": { "after": next, "link": format!("?after={next}") } });
    }
    ok(StatusCode::OK, &body, h)
}
