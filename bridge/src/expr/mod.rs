//! The bridge's expression language: conditions (`where`), mappings
//! (`map`), keys and sink targets are short expressions over a message.
//!
//! It is deliberately small: literals, names, field and index access,
//! arithmetic, comparisons, logic and a fixed list of functions. Nothing
//! runs code, loops or reaches outside the message. Missing fields are
//! `null`; type mistakes (`'a' - 1`) are evaluation errors, which send the
//! message to the dead-letter destination. docs/bridge.md is the reference.
//!
//! ```text
//! payload.temp > 30 && segment(topic, 1) == 'kitchen'
//! coalesce(props.seq, sha256(payload_text))
//! 'iot.' + replace(topic, '/', '.')
//! ```

mod eval;
mod parse;

use std::ops::RangeInclusive;

use serde_json::Value;

pub use eval::{truthy, EvalError, Scope};
pub use parse::parse;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number, string, `true`, `false` or `null`.
    Literal(Value),
    /// A name the scope gives a value: `topic`, `payload`, `props`...
    Var(String),
    /// `base.field` or `base[index]`.
    Index(Box<Expr>, Box<Expr>),
    /// `!x`, `-x`.
    Unary(UnaryOp, Box<Expr>),
    /// `a + b`, `a && b`, ...
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `name(args...)`, one of [`FUNCTIONS`].
    Call(String, Vec<Expr>),
}

/// A prefix operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// `!` / `not`.
    Not,
    /// `-`.
    Neg,
}

/// An infix operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `||` / `or`.
    Or,
    /// `&&` / `and`.
    And,
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `+`: numbers add, otherwise strings join.
    Add,
    /// `-`.
    Sub,
    /// `*`.
    Mul,
    /// `/`.
    Div,
    /// `%`.
    Rem,
}

/// The functions and how many arguments each takes.
pub const FUNCTIONS: &[(&str, RangeInclusive<usize>)] = &[
    ("lower", 1..=1),
    ("upper", 1..=1),
    ("segment", 2..=2),
    ("replace", 3..=3),
    ("coalesce", 1..=16),
    ("number", 1..=1),
    ("string", 1..=1),
    ("json", 1..=1),
    ("len", 1..=1),
    ("contains", 2..=2),
    ("starts_with", 2..=2),
    ("ends_with", 2..=2),
    ("sha256", 1..=1),
    ("if", 3..=3),
];

/// An expression that does not parse, with the character offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {}: {message}", offset + 1)]
pub struct ParseError {
    /// Byte offset in the expression.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    fn at(offset: usize, message: String) -> ParseError {
        ParseError { offset, message }
    }
}

#[cfg(test)]
mod tests;
