//! Search: `criteria` expressions (and/or, escapes), `email`, `phone` and `word`.

use super::*;

#[derive(Debug, PartialEq)]
pub enum Criteria {
    Test {
        field: String,
        op: String,
        value: String,
    },
    And(Box<Criteria>, Box<Criteria>),
    Or(Box<Criteria>, Box<Criteria>),
}

/// Parses `((Email:equals:a@b.it)and(Last_Name:starts_with:Ro))`; `\(`, `\)` and `\,`
/// escape those characters in values.
pub fn parse_criteria(s: &str) -> Result<Criteria, String> {
    let chars: Vec<char> = s.trim().chars().collect();
    let (c, rest) = parse_expr(&chars)?;
    if !rest.is_empty() {
        return Err(format!("unexpected `{}`", rest.iter().collect::<String>()));
    }
    Ok(c)
}

pub(super) fn parse_expr(input: &[char]) -> Result<(Criteria, &[char]), String> {
    let (mut left, mut rest) = parse_group(input)?;
    let mut count = 1;
    loop {
        let text: String = rest.iter().take(3).collect::<String>().to_lowercase();
        let (is_and, skip) = if text.starts_with("and") {
            (true, 3)
        } else if text.starts_with("or") {
            (false, 2)
        } else {
            break;
        };
        let (right, r) = parse_group(&rest[skip..])?;
        count += 1;
        if count > 10 {
            return Err("at most 10 criteria".into());
        }
        left = if is_and {
            Criteria::And(Box::new(left), Box::new(right))
        } else {
            Criteria::Or(Box::new(left), Box::new(right))
        };
        rest = r;
    }
    Ok((left, rest))
}

pub(super) fn parse_group(input: &[char]) -> Result<(Criteria, &[char]), String> {
    if input.first() != Some(&'(') {
        return Err("a criterion starts with `(`".into());
    }
    if input.get(1) == Some(&'(') {
        let (inner, rest) = parse_expr(&input[1..])?;
        if rest.first() != Some(&')') {
            return Err("missing `)`".into());
        }
        return Ok((inner, &rest[1..]));
    }
    let mut text = String::new();
    let mut i = 1;
    while i < input.len() {
        match input[i] {
            '\\' if i + 1 < input.len() => {
                text.push('\u{0}');
                text.push(input[i + 1]);
                i += 2;
            }
            ')' => break,
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    if i >= input.len() {
        return Err("missing `)`".into());
    }
    let parts: Vec<&str> = text.splitn(3, ':').collect();
    let [field, op, value] = parts.as_slice() else {
        return Err(format!(
            "`{}` is not field:operator:value",
            text.replace('\u{0}', "")
        ));
    };
    Ok((
        Criteria::Test {
            field: field.to_string(),
            op: op.to_string(),
            value: value.replace('\u{0}', ""),
        },
        &input[i + 1..],
    ))
}

pub(super) fn field_text(r: &Record, field: &str) -> Option<String> {
    match field {
        "id" => Some(r.id.to_string()),
        "Created_Time" => Some(zoho_time(r.created_ms)),
        "Modified_Time" => Some(zoho_time(r.modified_ms)),
        _ => match r.fields.get(field)? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("name").and_then(Value::as_str).map(String::from),
            other => Some(other.to_string()),
        },
    }
}

pub(super) fn eval(c: &Criteria, r: &Record) -> Result<bool, String> {
    Ok(match c {
        Criteria::And(a, b) => eval(a, r)? && eval(b, r)?,
        Criteria::Or(a, b) => eval(a, r)? || eval(b, r)?,
        Criteria::Test { field, op, value } => {
            let actual = field_text(r, field);
            let a = actual.as_deref().unwrap_or("").to_lowercase();
            let v = value.to_lowercase();
            let num = |s: &str| {
                s.parse::<f64>()
                    .ok()
                    .or_else(|| parse_time(s).map(|t| t as f64))
            };
            let cmp = || match (num(&a), num(&v)) {
                (Some(x), Some(y)) => x.partial_cmp(&y),
                _ => Some(a.cmp(&v)),
            };
            use std::cmp::Ordering::*;
            match op.as_str() {
                // Zoho: `equals` on text behaves like "contains".
                "equals" => actual.is_some() && a.contains(&v),
                "not_equal" => !a.contains(&v),
                "starts_with" => a.starts_with(&v),
                "in" => v.split(',').any(|x| a == x.trim()),
                "greater_than" => cmp() == Some(Greater),
                "greater_equal" => matches!(cmp(), Some(Greater | Equal)),
                "less_than" => cmp() == Some(Less),
                "less_equal" => matches!(cmp(), Some(Less | Equal)),
                other => return Err(format!("unsupported operator `{other}`")),
            }
        }
    })
}

pub(super) async fn search(
    State(z): State<Arc<Zoho>>,
    call: ModuleCall,
    RawQuery(q): RawQuery,
) -> Response {
    let module = call.module;
    let pairs = query_pairs(q.as_deref());
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let criteria = if let Some(c) = get("criteria") {
        match parse_criteria(&c) {
            Ok(c) => c,
            Err(e) => {
                return zoho_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_QUERY",
                    &format!("invalid query formed: {e}"),
                    json!({ "param_name": "criteria" }),
                );
            }
        }
    } else if let Some(email) = get("email") {
        Criteria::Test {
            field: "Email".into(),
            op: "equals".into(),
            value: email,
        }
    } else if let Some(phone) = get("phone") {
        Criteria::Test {
            field: "Phone".into(),
            op: "equals".into(),
            value: phone,
        }
    } else if let Some(word) = get("word") {
        let fields = match module {
            Module::Contacts => ["First_Name", "Last_Name", "Email"],
            Module::Accounts => ["Account_Name", "Website", "Billing_City"],
        };
        let t = |f: &str| {
            Box::new(Criteria::Test {
                field: f.into(),
                op: "equals".into(),
                value: word.clone(),
            })
        };
        Criteria::Or(
            t(fields[0]),
            Box::new(Criteria::Or(t(fields[1]), t(fields[2]))),
        )
    } else {
        return required_param_missing("criteria");
    };
    let p = attempt!(paging(&pairs));
    let only = fields_param(q.as_deref());
    let store = z.store.lock().unwrap_or_else(|p| p.into_inner());
    let mut hits = Vec::new();
    for r in store
        .records
        .get(&module)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|r| r.deleted_ms.is_none())
    {
        match eval(&criteria, r) {
            Ok(true) => hits.push(r),
            Ok(false) => {}
            Err(e) => {
                return zoho_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_QUERY",
                    &format!("invalid query formed: {e}"),
                    json!({ "param_name": "criteria" }),
                );
            }
        }
    }
    page_answer(hits, &p, only.as_deref(), "id", "asc")
}
