//! Text to [`Expr`]: a tokenizer and a precedence-climbing parser.
//!
//! Precedence, loosest first: `||` (`or`), `&&` (`and`), comparisons
//! (`== != < <= > >=`), `+ -`, `* / %`, prefix `!` (`not`) and `-`, then
//! postfix `.field`, `[index]` and calls.

use serde_json::Value;

use super::{BinaryOp, Expr, ParseError, UnaryOp, FUNCTIONS};

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64),
    Str(String),
    Ident(String),
    Punct(&'static str),
}

const PUNCTS: [&str; 20] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")", "[", "]",
    ".", ",",
];

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                // `a[0].b`: a dot followed by a letter ends the number.
                if bytes[i] == b'.' && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    break;
                }
                i += 1;
            }
            let number = text[start..i]
                .parse()
                .map_err(|_| ParseError::at(start, format!("bad number `{}`", &text[start..i])))?;
            tokens.push((start, Token::Number(number)));
        } else if c == b'\'' || c == b'"' {
            let mut value = String::new();
            i += 1;
            let mut chars = text[i..].char_indices();
            let mut closed = false;
            while let Some((offset, ch)) = chars.next() {
                match ch {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, 't')) => value.push('\t'),
                        Some((_, other)) => value.push(other),
                        None => break,
                    },
                    ch if ch as u32 == c as u32 => {
                        i += offset + 1;
                        closed = true;
                        break;
                    }
                    ch => value.push(ch),
                }
            }
            if !closed {
                return Err(ParseError::at(start, "unterminated string".into()));
            }
            tokens.push((start, Token::Str(value)));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push((start, Token::Ident(text[start..i].to_owned())));
        } else {
            let punct = PUNCTS
                .iter()
                .find(|p| text[i..].starts_with(**p))
                .ok_or_else(|| {
                    let ch = text[i..].chars().next().unwrap_or('?');
                    ParseError::at(start, format!("unexpected `{ch}`"))
                })?;
            i += punct.len();
            tokens.push((start, Token::Punct(punct)));
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    end: usize,
}

/// Parses one expression.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        next: 0,
        end: text.len(),
    };
    if parser.tokens.is_empty() {
        return Err(ParseError::at(0, "empty expression".into()));
    }
    let expr = parser.expr(0)?;
    if let Some((at, token)) = parser.tokens.get(parser.next) {
        return Err(ParseError::at(
            *at,
            format!("unexpected {} after the expression", describe(token)),
        ));
    }
    Ok(expr)
}

fn describe(token: &Token) -> String {
    match token {
        Token::Number(n) => format!("number {n}"),
        Token::Str(s) => format!("string '{s}'"),
        Token::Ident(name) => format!("`{name}`"),
        Token::Punct(p) => format!("`{p}`"),
    }
}

fn binary_op(token: &Token) -> Option<(BinaryOp, u8)> {
    let op = match token {
        Token::Punct(p) => *p,
        Token::Ident(word) if word == "or" => "||",
        Token::Ident(word) if word == "and" => "&&",
        _ => return None,
    };
    Some(match op {
        "||" => (BinaryOp::Or, 1),
        "&&" => (BinaryOp::And, 2),
        "==" => (BinaryOp::Eq, 3),
        "!=" => (BinaryOp::Ne, 3),
        "<" => (BinaryOp::Lt, 3),
        "<=" => (BinaryOp::Le, 3),
        ">" => (BinaryOp::Gt, 3),
        ">=" => (BinaryOp::Ge, 3),
        "+" => (BinaryOp::Add, 4),
        "-" => (BinaryOp::Sub, 4),
        "*" => (BinaryOp::Mul, 5),
        "/" => (BinaryOp::Div, 5),
        "%" => (BinaryOp::Rem, 5),
        _ => return None,
    })
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(at, _)| *at)
    }

    fn bump(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.next).map(|(_, t)| t.clone());
        self.next += 1;
        token
    }

    fn expect(&mut self, punct: &str) -> Result<(), ParseError> {
        match self.peek() {
            Some(Token::Punct(p)) if *p == punct => {
                self.next += 1;
                Ok(())
            }
            Some(other) => Err(ParseError::at(
                self.position(),
                format!("expected `{punct}`, found {}", describe(other)),
            )),
            None => Err(ParseError::at(self.end, format!("expected `{punct}`"))),
        }
    }

    /// Binary operators binding tighter than `min`.
    fn expr(&mut self, min: u8) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while let Some((op, precedence)) = self.peek().and_then(binary_op) {
            if precedence <= min {
                break;
            }
            self.next += 1;
            let right = self.expr(precedence)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.peek() {
            Some(Token::Punct("!")) => {
                self.next += 1;
                Ok(Expr::Unary(UnaryOp::Not, Box::new(self.unary()?)))
            }
            Some(Token::Ident(word)) if word == "not" => {
                self.next += 1;
                Ok(Expr::Unary(UnaryOp::Not, Box::new(self.unary()?)))
            }
            Some(Token::Punct("-")) => {
                self.next += 1;
                Ok(Expr::Unary(UnaryOp::Neg, Box::new(self.unary()?)))
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.primary()?;
        loop {
            match self.peek() {
                Some(Token::Punct(".")) => {
                    self.next += 1;
                    let at = self.position();
                    match self.bump() {
                        Some(Token::Ident(name)) => {
                            expr = Expr::Index(Box::new(expr), Box::new(Expr::Literal(name.into())))
                        }
                        _ => {
                            return Err(ParseError::at(
                                at,
                                "expected a field name after `.`".into(),
                            ))
                        }
                    }
                }
                Some(Token::Punct("[")) => {
                    self.next += 1;
                    let index = self.expr(0)?;
                    self.expect("]")?;
                    expr = Expr::Index(Box::new(expr), Box::new(index));
                }
                _ => return Ok(expr),
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let at = self.position();
        match self.bump() {
            Some(Token::Number(n)) => Ok(Expr::Literal(number(n))),
            Some(Token::Str(s)) => Ok(Expr::Literal(Value::String(s))),
            Some(Token::Punct("(")) => {
                let inner = self.expr(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Some(Token::Ident(word)) => match word.as_str() {
                "true" => Ok(Expr::Literal(Value::Bool(true))),
                "false" => Ok(Expr::Literal(Value::Bool(false))),
                "null" => Ok(Expr::Literal(Value::Null)),
                _ if self.peek() == Some(&Token::Punct("(")) => {
                    self.next += 1;
                    let mut args = Vec::new();
                    if self.peek() != Some(&Token::Punct(")")) {
                        loop {
                            args.push(self.expr(0)?);
                            if self.peek() == Some(&Token::Punct(",")) {
                                self.next += 1;
                            } else {
                                break;
                            }
                        }
                    }
                    self.expect(")")?;
                    let Some((_, arity)) = FUNCTIONS.iter().find(|(name, _)| *name == word) else {
                        return Err(ParseError::at(at, format!("no function `{word}`")));
                    };
                    if !arity.contains(&args.len()) {
                        return Err(ParseError::at(
                            at,
                            format!("`{word}` takes {arity:?} arguments, not {}", args.len()),
                        ));
                    }
                    Ok(Expr::Call(word, args))
                }
                _ => Ok(Expr::Var(word)),
            },
            Some(token) => Err(ParseError::at(
                at,
                format!("unexpected {}", describe(&token)),
            )),
            None => Err(ParseError::at(at, "the expression ends too early".into())),
        }
    }
}

/// A JSON number, an integer when it is one.
pub(super) fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}
