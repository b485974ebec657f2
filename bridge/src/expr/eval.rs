//! Evaluating an [`Expr`] against a [`Scope`].

use std::cmp::Ordering;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::parse::number;
use super::{BinaryOp, Expr, UnaryOp};

/// Gives the values of the names an expression may use.
pub trait Scope {
    /// The value of a top-level name; `None` for a name the scope does not
    /// know (an evaluation error, so typos do not pass silently as null).
    fn var(&self, name: &str) -> Option<Value>;
}

/// Why an expression could not be evaluated for one message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A name the scope does not know.
    #[error("unknown name `{0}`")]
    UnknownName(String),
    /// An operator or function got a value of the wrong type.
    #[error("{0}")]
    Type(String),
}

/// `false` and `null` are false; everything else is true.
pub fn truthy(value: &Value) -> bool {
    !matches!(value, Value::Null | Value::Bool(false))
}

impl Expr {
    /// The expression's value for `scope`.
    pub fn eval(&self, scope: &dyn Scope) -> Result<Value, EvalError> {
        match self {
            Expr::Literal(value) => Ok(value.clone()),
            Expr::Var(name) => scope
                .var(name)
                .ok_or_else(|| EvalError::UnknownName(name.clone())),
            Expr::Index(base, index) => {
                let base = base.eval(scope)?;
                let index = index.eval(scope)?;
                Ok(match (&base, &index) {
                    (Value::Object(map), Value::String(key)) => {
                        map.get(key).cloned().unwrap_or(Value::Null)
                    }
                    (Value::Array(items), Value::Number(n)) => n
                        .as_u64()
                        .and_then(|i| items.get(i as usize))
                        .cloned()
                        .unwrap_or(Value::Null),
                    _ => Value::Null,
                })
            }
            Expr::Unary(UnaryOp::Not, inner) => Ok(Value::Bool(!truthy(&inner.eval(scope)?))),
            Expr::Unary(UnaryOp::Neg, inner) => match inner.eval(scope)? {
                Value::Null => Ok(Value::Null),
                value => Ok(number(-as_number(&value, "-")?)),
            },
            Expr::Binary(BinaryOp::And, left, right) => {
                if !truthy(&left.eval(scope)?) {
                    return Ok(Value::Bool(false));
                }
                Ok(Value::Bool(truthy(&right.eval(scope)?)))
            }
            Expr::Binary(BinaryOp::Or, left, right) => {
                if truthy(&left.eval(scope)?) {
                    return Ok(Value::Bool(true));
                }
                Ok(Value::Bool(truthy(&right.eval(scope)?)))
            }
            Expr::Binary(op, left, right) => binary(*op, left.eval(scope)?, right.eval(scope)?),
            Expr::Call(name, args) => call(name, args, scope),
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_number(value: &Value, op: &str) -> Result<f64, EvalError> {
    value
        .as_f64()
        .ok_or_else(|| EvalError::Type(format!("`{op}` needs a number, not {}", type_name(value))))
}

fn compare(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn equal(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(_), Value::Number(_)) => compare(left, right) == Some(Ordering::Equal),
        _ => left == right,
    }
}

fn binary(op: BinaryOp, left: Value, right: Value) -> Result<Value, EvalError> {
    let ordered = |accept: fn(Ordering) -> bool| {
        // Comparing a missing field, or a string with a number, is false:
        // a condition on a field a message lacks does not select it.
        Ok(Value::Bool(compare(&left, &right).is_some_and(accept)))
    };
    match op {
        BinaryOp::Eq => Ok(Value::Bool(equal(&left, &right))),
        BinaryOp::Ne => Ok(Value::Bool(!equal(&left, &right))),
        BinaryOp::Lt => ordered(Ordering::is_lt),
        BinaryOp::Le => ordered(Ordering::is_le),
        BinaryOp::Gt => ordered(Ordering::is_gt),
        BinaryOp::Ge => ordered(Ordering::is_ge),
        BinaryOp::Add => match (&left, &right) {
            (Value::Number(_), Value::Number(_)) => {
                Ok(number(as_number(&left, "+")? + as_number(&right, "+")?))
            }
            (Value::String(_), _) | (_, Value::String(_)) => {
                Ok(Value::String(text(&left) + &text(&right)))
            }
            _ => Err(EvalError::Type(format!(
                "`+` needs numbers or strings, not {} and {}",
                type_name(&left),
                type_name(&right)
            ))),
        },
        BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
            let symbol = match op {
                BinaryOp::Sub => "-",
                BinaryOp::Mul => "*",
                BinaryOp::Div => "/",
                _ => "%",
            };
            let (a, b) = (as_number(&left, symbol)?, as_number(&right, symbol)?);
            if matches!(op, BinaryOp::Div | BinaryOp::Rem) && b == 0.0 {
                return Err(EvalError::Type(format!("`{symbol}` by zero")));
            }
            Ok(number(match op {
                BinaryOp::Sub => a - b,
                BinaryOp::Mul => a * b,
                BinaryOp::Div => a / b,
                _ => a % b,
            }))
        }
        BinaryOp::And | BinaryOp::Or => unreachable!("short-circuited in eval"),
    }
}

/// A value as text: strings as they are, `null` as empty, others as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn string_arg<'a>(value: &'a Value, function: &str) -> Result<&'a str, EvalError> {
    value.as_str().ok_or_else(|| {
        EvalError::Type(format!(
            "`{function}` needs a string, not {}",
            type_name(value)
        ))
    })
}

fn call(name: &str, args: &[Expr], scope: &dyn Scope) -> Result<Value, EvalError> {
    // `coalesce` and `if` evaluate only what they need.
    match name {
        "coalesce" => {
            for arg in args {
                let value = arg.eval(scope)?;
                if !value.is_null() {
                    return Ok(value);
                }
            }
            return Ok(Value::Null);
        }
        "if" => {
            let chosen = if truthy(&args[0].eval(scope)?) {
                &args[1]
            } else {
                &args[2]
            };
            return chosen.eval(scope);
        }
        _ => {}
    }
    let values = args
        .iter()
        .map(|arg| arg.eval(scope))
        .collect::<Result<Vec<_>, _>>()?;
    let first = &values[0];
    if first.is_null() && name != "json" && name != "string" && name != "len" {
        // Functions of a missing field give null, so `lower(payload.x)`
        // works on messages without `x`.
        return Ok(Value::Null);
    }
    Ok(match name {
        "lower" => Value::String(string_arg(first, name)?.to_lowercase()),
        "upper" => Value::String(string_arg(first, name)?.to_uppercase()),
        "segment" => {
            let levels: Vec<&str> = string_arg(first, name)?.split('/').collect();
            let index = as_number(&values[1], "segment")? as i64;
            let index = if index < 0 {
                levels.len() as i64 + index
            } else {
                index
            };
            usize::try_from(index)
                .ok()
                .and_then(|i| levels.get(i))
                .map_or(Value::Null, |level| Value::String((*level).to_owned()))
        }
        "replace" => Value::String(
            string_arg(first, name)?
                .replace(string_arg(&values[1], name)?, string_arg(&values[2], name)?),
        ),
        "number" => match first {
            Value::Number(_) => first.clone(),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map(number)
                .map_err(|_| EvalError::Type(format!("`number`: '{s}' is not a number")))?,
            Value::Bool(b) => Value::from(u8::from(*b)),
            other => {
                return Err(EvalError::Type(format!(
                    "`number` cannot convert {}",
                    type_name(other)
                )))
            }
        },
        "string" => match first {
            Value::Null => Value::Null,
            other => Value::String(text(other)),
        },
        "json" => Value::String(first.to_string()),
        "len" => match first {
            Value::String(s) => Value::from(s.chars().count()),
            Value::Array(items) => Value::from(items.len()),
            Value::Object(map) => Value::from(map.len()),
            Value::Null => Value::from(0),
            other => return Err(EvalError::Type(format!("`len` of {}", type_name(other)))),
        },
        "contains" => match first {
            Value::Array(items) => Value::Bool(items.iter().any(|item| equal(item, &values[1]))),
            _ => Value::Bool(string_arg(first, name)?.contains(string_arg(&values[1], name)?)),
        },
        "starts_with" => {
            Value::Bool(string_arg(first, name)?.starts_with(string_arg(&values[1], name)?))
        }
        "ends_with" => {
            Value::Bool(string_arg(first, name)?.ends_with(string_arg(&values[1], name)?))
        }
        "sha256" => Value::String(hex::encode(Sha256::digest(text(first).as_bytes()))),
        other => return Err(EvalError::Type(format!("no function `{other}`"))),
    })
}
