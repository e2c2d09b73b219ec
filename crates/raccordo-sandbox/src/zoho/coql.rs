//! COQL (`POST /crm/v8/coql`): the subset clients use to look records up in bulk —
//! `select <fields> from <Module> where <conditions> [order by <field> [asc|desc]]
//! [limit [offset,] count]`, conditions joined by `and`/`or` (at most 25), each
//! `Field = 'v'`, `!=`, `in ('a', 'b')` (at most 50 values), `not in`, `like '%v%'`,
//! `is null`, `is not null`. Text compares without regard to case, as Zoho's does.

use super::*;

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Eq(String, String, bool),
    In(String, Vec<String>, bool),
    Like(String, String),
    Null(String, bool),
}

#[derive(Debug, PartialEq)]
struct Query {
    fields: Vec<String>,
    module: String,
    /// Disjunction of conjunctions.
    any: Vec<Vec<Cond>>,
    order: Option<(String, bool)>,
    offset: usize,
    limit: usize,
}

fn tokens(q: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut s = String::from("'");
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("a quoted value is not closed".into()),
                    Some('\\') => {
                        if let Some(n) = chars.get(i + 1) {
                            s.push(*n);
                        }
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        s.push(*c);
                        i += 1;
                    }
                }
            }
            out.push(s);
        } else if "(),=".contains(c) {
            out.push(c.to_string());
            i += 1;
        } else if c == '!' && chars.get(i + 1) == Some(&'=') {
            out.push("!=".into());
            i += 2;
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !"(),=!'".contains(chars[i]) {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        }
    }
    Ok(out)
}

fn parse(q: &str) -> Result<Query, String> {
    let t = tokens(q)?;
    let mut i = 0;
    let kw = |i: usize, w: &str| t.get(i).is_some_and(|x| x.eq_ignore_ascii_case(w));
    if !kw(0, "select") {
        return Err("a query starts with `select`".into());
    }
    i += 1;
    let mut fields = Vec::new();
    while i < t.len() && !kw(i, "from") {
        if t[i] != "," {
            fields.push(t[i].clone());
        }
        i += 1;
    }
    if fields.is_empty() || !kw(i, "from") {
        return Err("`select <fields> from <module>` expected".into());
    }
    let module = t.get(i + 1).cloned().ok_or("a module after `from`")?;
    i += 2;
    let mut any = vec![Vec::new()];
    let mut count = 0;
    if kw(i, "where") {
        i += 1;
        loop {
            let field = t.get(i).cloned().ok_or("a condition expected")?;
            let value = |s: &String| -> Result<String, String> {
                s.strip_prefix('\'')
                    .map(str::to_string)
                    .ok_or_else(|| "values are quoted".into())
            };
            let cond = if t.get(i + 1).is_some_and(|x| x == "=" || x == "!=") {
                let c = Cond::Eq(
                    field,
                    value(t.get(i + 2).ok_or("a value")?)?,
                    t[i + 1] == "=",
                );
                i += 3;
                c
            } else if kw(i + 1, "like") {
                let c = Cond::Like(field, value(t.get(i + 2).ok_or("a value")?)?);
                i += 3;
                c
            } else if kw(i + 1, "is") {
                let not = kw(i + 2, "not");
                let at = if not { i + 3 } else { i + 2 };
                if !kw(at, "null") {
                    return Err("`is null` or `is not null`".into());
                }
                i = at + 1;
                Cond::Null(field, !not)
            } else if kw(i + 1, "in") || (kw(i + 1, "not") && kw(i + 2, "in")) {
                let positive = kw(i + 1, "in");
                i += if positive { 2 } else { 3 };
                if t.get(i).map(String::as_str) != Some("(") {
                    return Err("`in (...)`".into());
                }
                i += 1;
                let mut values = Vec::new();
                while t.get(i).map(String::as_str) != Some(")") {
                    let v = t.get(i).ok_or("`)` expected")?;
                    if v != "," {
                        values.push(value(v)?);
                    }
                    i += 1;
                }
                i += 1;
                if values.len() > 50 {
                    return Err("at most 50 values in `in`".into());
                }
                Cond::In(field, values, positive)
            } else {
                return Err(format!("unsupported operator after `{field}`"));
            };
            count += 1;
            if count > 25 {
                return Err("at most 25 conditions".into());
            }
            any.last_mut().expect("one group").push(cond);
            if kw(i, "and") {
                i += 1;
            } else if kw(i, "or") {
                any.push(Vec::new());
                i += 1;
            } else {
                break;
            }
        }
    } else {
        return Err("COQL queries need a `where` clause".into());
    }
    let mut order = None;
    if kw(i, "order") && kw(i + 1, "by") {
        let field = t.get(i + 2).cloned().ok_or("a field after `order by`")?;
        i += 3;
        let desc = kw(i, "desc");
        if desc || kw(i, "asc") {
            i += 1;
        }
        order = Some((field, desc));
    }
    let (mut offset, mut limit) = (0, 200);
    if kw(i, "limit") {
        let a: usize = t
            .get(i + 1)
            .and_then(|x| x.parse().ok())
            .ok_or("a number after `limit`")?;
        if t.get(i + 2).map(String::as_str) == Some(",") {
            offset = a;
            limit = t
                .get(i + 3)
                .and_then(|x| x.parse().ok())
                .ok_or("`limit offset, count`")?;
            i += 4;
        } else {
            limit = a;
            i += 2;
        }
    }
    if i < t.len() {
        return Err(format!("unexpected `{}`", t[i]));
    }
    if limit == 0 || limit > 2000 {
        return Err("limit must be 1 to 2000".into());
    }
    Ok(Query {
        fields,
        module,
        any,
        order,
        offset,
        limit,
    })
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_string),
        other => Some(other.to_string()),
    }
}

fn holds(c: &Cond, fields: &Map<String, Value>) -> bool {
    let lower = |s: &str| s.to_lowercase();
    match c {
        Cond::Eq(f, v, positive) => {
            (text(fields.get(f)).map(|x| lower(&x)) == Some(lower(v))) == *positive
        }
        Cond::In(f, vs, positive) => {
            let x = text(fields.get(f)).map(|x| lower(&x));
            x.is_some_and(|x| vs.iter().any(|v| lower(v) == x)) == *positive
        }
        Cond::Like(f, pattern) => {
            let x = lower(&text(fields.get(f)).unwrap_or_default());
            let p = lower(pattern);
            match (p.strip_prefix('%'), p.strip_suffix('%')) {
                (Some(_), Some(_)) => x.contains(p.trim_matches('%')),
                (Some(rest), None) => x.ends_with(rest),
                (None, Some(rest)) => x.starts_with(rest),
                (None, None) => x == p,
            }
        }
        Cond::Null(f, null) => text(fields.get(f)).is_none() == *null,
    }
}

pub(super) async fn coql(State(z): State<Arc<Zoho>>, _: Admitted, body: Bytes) -> Response {
    let invalid = |message: String| {
        zoho_error(
            StatusCode::BAD_REQUEST,
            "SYNTAX_ERROR",
            &message,
            json!({ "api_name": "select_query" }),
        )
    };
    let Some(select) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["select_query"].as_str().map(str::to_string))
    else {
        return required_param_missing("select_query");
    };
    let query = match parse(&select) {
        Ok(q) => q,
        Err(e) => return invalid(e),
    };
    let Some(module) = Module::parse(&query.module) else {
        return zoho_error(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            "invalid module",
            json!({ "module": query.module }),
        );
    };
    let store = z.store.lock().unwrap_or_else(|p| p.into_inner());
    let mut rows: Vec<&Record> = store
        .records
        .get(&module)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|r| r.deleted_ms.is_none())
        .filter(|r| {
            query
                .any
                .iter()
                .any(|all| all.iter().all(|c| holds(c, &r.fields)))
        })
        .collect();
    match &query.order {
        Some((f, desc)) => {
            rows.sort_by_key(|r| text(r.fields.get(f)).unwrap_or_default());
            if *desc {
                rows.reverse();
            }
        }
        None => rows.sort_by_key(|r| r.id),
    }
    let total = rows.len();
    let page: Vec<Value> = rows
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .map(|r| render(r, Some(&query.fields)))
        .collect();
    if page.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let count = page.len();
    json_response(
        StatusCode::OK,
        JSON,
        &json!({ "data": page, "info": { "count": count, "more_records": query.offset + count < total } }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_clients_make_parses() {
        let q = parse("select Email, Last_Name from Contacts where Email in ('a@b.it', 'c\\'d@e.it') and Last_Name is not null order by Email desc limit 10, 50").unwrap();
        assert_eq!(q.fields, ["Email", "Last_Name"]);
        assert_eq!(q.module, "Contacts");
        assert_eq!(
            q.any[0][0],
            Cond::In(
                "Email".into(),
                vec!["a@b.it".into(), "c'd@e.it".into()],
                true
            )
        );
        assert_eq!(q.any[0][1], Cond::Null("Last_Name".into(), false));
        assert_eq!((q.offset, q.limit), (10, 50));
        assert!(
            parse("select Email from Contacts").is_err(),
            "where is required"
        );
        assert!(parse("select Email from Contacts where Email ~ 'x'").is_err());
        let many = (0..51)
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            parse(&format!(
                "select Email from Contacts where Email in ({many})"
            ))
            .is_err()
        );
    }
}
