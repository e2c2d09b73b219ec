//! Templates over a run's context (minijinja), checked when the config loads.
//!
//! A run's context is `{ trigger, steps: { <name>: <output> }, run: { id, flow } }`. A string
//! that is exactly one `{{ expression }}` evaluates to the expression's value with its type
//! (a number stays a number, an object an object); any other string renders to text.
//! Undefined variables are errors, not empty strings: a typo must not write blanks to a CRM.

use std::sync::{Arc, OnceLock};

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// The names a template may start from.
pub const ROOTS: [&str; 5] = ["trigger", "steps", "run", "input", "record"];

/// The one template environment: strict about undefined values, with the JSON filters.
pub fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env
    })
}

/// The environment of the load-time probe: undefined values pass silently, so rendering a
/// template over an empty context reaches its filters and functions.
fn probe_environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env
    })
}

/// Unknown filters, tests and functions are found by minijinja only when a template is
/// rendered: render it once over nothing, and report those (other errors need real data).
fn probe(source: &str, expression: Option<&str>) -> Result<(), String> {
    use minijinja::ErrorKind;
    let env = probe_environment();
    let rendered = match expression {
        Some(expr) => env
            .compile_expression(expr)
            .and_then(|e| e.eval(minijinja::context! {}))
            .map(|_| ()),
        None => env.render_str(source, minijinja::context! {}).map(|_| ()),
    };
    match rendered {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnknownFilter | ErrorKind::UnknownTest | ErrorKind::UnknownFunction
            ) =>
        {
            Err(describe(&e))
        }
        _ => Ok(()),
    }
}

/// What a template may refer to when it is checked: the steps before it, and whether the
/// step has a rendered `input` of its own.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub earlier_steps: Vec<String>,
    /// An `ai` step's `input`, seen by its prompt.
    pub has_input: bool,
    /// One of a `crm_update`'s `records`, seen by its per-record `properties`.
    pub has_record: bool,
}

/// A template that parsed and refers only to what exists.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: Arc<str>,
    /// `Some(expression)` when the whole string is one `{{ … }}`.
    expression: Option<Arc<str>>,
}

impl Template {
    pub fn parse(source: &str, scope: &Scope) -> Result<Self, String> {
        let env = environment();
        let expression = whole_expression(source);
        let names = match &expression {
            Some(expr) => env
                .compile_expression(expr)
                .map_err(|e| describe(&e))?
                .undeclared_variables(true),
            None => env
                .template_from_str(source)
                .map_err(|e| describe(&e))?
                .undeclared_variables(true),
        };
        let mut names: Vec<_> = names.into_iter().collect();
        names.sort();
        for name in names {
            let mut parts = name.split('.');
            let root = parts.next().unwrap_or_default();
            if !ROOTS.contains(&root)
                || (root == "input" && !scope.has_input)
                || (root == "record" && !scope.has_record)
            {
                let mut seen = vec!["`trigger`", "`steps`", "`run`"];
                if scope.has_input {
                    seen.push("`input`");
                }
                if scope.has_record {
                    seen.push("`record`");
                }
                return Err(format!(
                    "unknown variable `{root}` (a template here sees {})",
                    seen.join(", ")
                ));
            }
            if root == "steps"
                && let Some(step) = parts.next()
                && !scope.earlier_steps.iter().any(|s| s == step)
            {
                return Err(format!(
                    "`steps.{step}` is not a step that runs before this one"
                ));
            }
        }
        probe(source, expression)?;
        Ok(Self {
            source: source.into(),
            expression: expression.map(Into::into),
        })
    }

    /// The value: typed for a whole `{{ expression }}`, else the rendered text.
    pub fn eval(&self, context: &minijinja::Value) -> Result<Value, String> {
        let env = environment();
        match &self.expression {
            Some(expr) => {
                let value = env
                    .compile_expression(expr)
                    .and_then(|e| e.eval(context))
                    .map_err(|e| describe(&e))?;
                if value.is_undefined() {
                    return Err(format!("`{expr}` is undefined"));
                }
                serde_json::to_value(&value).map_err(|e| e.to_string())
            }
            None => env
                .render_str(&self.source, context)
                .map(Value::String)
                .map_err(|e| describe(&e)),
        }
    }

    /// The rendered text (a typed value is written as JSON, a string as itself).
    pub fn render(&self, context: &minijinja::Value) -> Result<String, String> {
        Ok(match self.eval(context)? {
            Value::String(s) => s,
            other => other.to_string(),
        })
    }

    /// Whether the value counts as true (Jinja's truthiness: empty, zero, none are false).
    pub fn truthy(&self, context: &minijinja::Value) -> Result<bool, String> {
        match &self.expression {
            Some(expr) => environment()
                .compile_expression(expr)
                .and_then(|e| e.eval(context))
                .map(|v| v.is_true())
                .map_err(|e| describe(&e)),
            None => Ok(!self.render(context)?.trim().is_empty()),
        }
    }
}

/// A condition: a bare expression (`steps.classify.sentiment == "negative"`); `{{ }}` around
/// it is accepted too.
pub fn condition(source: &str, scope: &Scope) -> Result<Template, String> {
    let trimmed = source.trim();
    if whole_expression(trimmed).is_some() {
        Template::parse(trimmed, scope)
    } else {
        Template::parse(&format!("{{{{ {trimmed} }}}}"), scope)
    }
}

/// A JSON value whose strings are templates (a body, a set of properties).
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateValue {
    Template(Template),
    Array(Vec<TemplateValue>),
    Object(Vec<(String, TemplateValue)>),
    Literal(Value),
}

impl TemplateValue {
    /// Parses every string in `value`; an error names the path of the failing one.
    pub fn parse(value: &Value, scope: &Scope) -> Result<Self, (String, String)> {
        Ok(match value {
            Value::String(s) => {
                Self::Template(Template::parse(s, scope).map_err(|e| (String::new(), e))?)
            }
            Value::Array(items) => Self::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Self::parse(v, scope).map_err(|(p, e)| (format!("[{i}]{p}"), e)))
                    .collect::<Result<_, (String, String)>>()?,
            ),
            Value::Object(map) => Self::Object(
                map.iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            Self::parse(v, scope).map_err(|(p, e)| (format!(".{k}{p}"), e))?,
                        ))
                    })
                    .collect::<Result<_, (String, String)>>()?,
            ),
            other => Self::Literal(other.clone()),
        })
    }

    pub fn eval(&self, context: &minijinja::Value) -> Result<Value, (String, String)> {
        Ok(match self {
            Self::Template(t) => t.eval(context).map_err(|e| (String::new(), e))?,
            Self::Literal(v) => v.clone(),
            Self::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.eval(context).map_err(|(p, e)| (format!("[{i}]{p}"), e)))
                    .collect::<Result<_, (String, String)>>()?,
            ),
            Self::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            v.eval(context).map_err(|(p, e)| (format!(".{k}{p}"), e))?,
                        ))
                    })
                    .collect::<Result<_, (String, String)>>()?,
            ),
        })
    }
}

/// `Some(inner)` when `source` is exactly one `{{ … }}` and nothing else.
fn whole_expression(source: &str) -> Option<&str> {
    let inner = source.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then(|| inner.trim())
}

/// A template error in one line: what and where (line numbers of multi-line templates).
fn describe(e: &minijinja::Error) -> String {
    let mut text = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line()
        && line > 1
    {
        text.push_str(&format!(" (line {line})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope(steps: &[&str]) -> Scope {
        Scope {
            earlier_steps: steps.iter().map(|s| s.to_string()).collect(),
            has_input: false,
            has_record: false,
        }
    }

    fn ctx(v: Value) -> minijinja::Value {
        minijinja::Value::from_serialize(&v)
    }

    #[test]
    fn a_whole_expression_keeps_its_type_and_text_renders() {
        let c = ctx(json!({ "trigger": { "amount": 12.5, "name": "Ada", "tags": ["a", "b"] } }));
        let n = Template::parse("{{ trigger.amount }}", &scope(&[])).unwrap();
        assert_eq!(n.eval(&c).unwrap(), json!(12.5));
        let list = Template::parse(" {{ trigger.tags }} ", &scope(&[])).unwrap();
        assert_eq!(list.eval(&c).unwrap(), json!(["a", "b"]));
        let text = Template::parse("Hi {{ trigger.name | upper }}!", &scope(&[])).unwrap();
        assert_eq!(text.eval(&c).unwrap(), json!("Hi ADA!"));
    }

    #[test]
    fn syntax_errors_unknown_roots_and_later_steps_are_refused_at_load() {
        let e = Template::parse("{{ trigger.name ", &scope(&[])).unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
        let e = Template::parse("{{ trigerr.name }}", &scope(&[])).unwrap_err();
        assert!(e.contains("unknown variable `trigerr`"), "{e}");
        let e = Template::parse("{{ steps.later.x }}", &scope(&["classify"])).unwrap_err();
        assert!(e.contains("`steps.later`"), "{e}");
        Template::parse("{{ steps.classify.x }}", &scope(&["classify"])).unwrap();
        let e = Template::parse("{{ input }}", &scope(&[])).unwrap_err();
        assert!(e.contains("unknown variable `input`"), "{e}");
        let e = Template::parse("Hi {{ trigger.name | truncate(5) }}", &scope(&[])).unwrap_err();
        assert!(e.contains("unknown filter"), "{e}");
        let e = Template::parse("{{ trigger.name is shiny }}", &scope(&[])).unwrap_err();
        assert!(e.contains("unknown test"), "{e}");
        Template::parse(
            "{% for r in trigger.items %}{{ r.id | upper }}{% endfor %}",
            &scope(&[]),
        )
        .unwrap();
    }

    #[test]
    fn a_missing_field_is_an_error_at_run_time_not_a_blank() {
        let c = ctx(json!({ "trigger": {} }));
        let t = Template::parse("Dear {{ trigger.name }}", &scope(&[])).unwrap();
        let e = t.eval(&c).unwrap_err();
        assert!(e.contains("undefined"), "{e}");
    }

    #[test]
    fn conditions_are_expressions() {
        let c = ctx(json!({ "steps": { "classify": { "sentiment": "negative" } } }));
        let t = condition(
            "steps.classify.sentiment == 'negative'",
            &scope(&["classify"]),
        )
        .unwrap();
        assert!(t.truthy(&c).unwrap());
        let t = condition(
            "{{ steps.classify.sentiment == 'positive' }}",
            &scope(&["classify"]),
        )
        .unwrap();
        assert!(!t.truthy(&c).unwrap());
    }

    #[test]
    fn template_values_name_the_failing_path() {
        let v = json!({ "properties": { "a": "{{ trigger.x }}", "b": ["ok", "{{ bad( }}"] } });
        let (path, _) = TemplateValue::parse(&v, &scope(&[])).unwrap_err();
        assert_eq!(path, ".properties.b[1]");
        let v = json!({ "n": 3, "s": "{{ trigger.x }}" });
        let t = TemplateValue::parse(&v, &scope(&[])).unwrap();
        assert_eq!(
            t.eval(&ctx(json!({ "trigger": { "x": true } }))).unwrap(),
            json!({ "n": 3, "s": true })
        );
    }
}
