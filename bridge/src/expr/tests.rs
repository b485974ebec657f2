use serde_json::{json, Value};

use super::*;

struct Message(Value);

impl Scope for Message {
    fn var(&self, name: &str) -> Option<Value> {
        self.0.get(name).cloned()
    }
}

fn message() -> Message {
    Message(json!({
        "topic": "sensors/kitchen/temp",
        "qos": 1,
        "payload": {"temp": 31.5, "unit": "C", "tags": ["a", "b"], "nested": {"x": 2}},
        "payload_text": "{\"temp\":31.5}",
        "props": {"seq": "17", "x-y": "z"},
    }))
}

fn eval(text: &str) -> Result<Value, EvalError> {
    parse(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .eval(&message())
}

#[test]
fn conditions_on_fields_and_topic_levels() {
    assert_eq!(eval("payload.temp > 30").unwrap(), json!(true));
    assert_eq!(
        eval("payload.temp > 30 && segment(topic, 1) == 'kitchen'").unwrap(),
        json!(true)
    );
    assert_eq!(
        eval("payload.temp >= 32 or payload.unit == \"C\"").unwrap(),
        json!(true)
    );
    assert_eq!(eval("not (payload.temp < 40)").unwrap(), json!(false));
    assert_eq!(eval("segment(topic, -1)").unwrap(), json!("temp"));
    assert_eq!(eval("segment(topic, 9)").unwrap(), Value::Null);
}

#[test]
fn missing_fields_are_null_and_compare_false() {
    assert_eq!(eval("payload.missing").unwrap(), Value::Null);
    assert_eq!(eval("payload.missing > 3").unwrap(), json!(false));
    assert_eq!(eval("payload.missing == null").unwrap(), json!(true));
    assert_eq!(eval("lower(payload.missing)").unwrap(), Value::Null);
    assert_eq!(eval("payload.temp.deeper").unwrap(), Value::Null);
}

#[test]
fn access_arithmetic_and_functions() {
    assert_eq!(eval("payload.tags[1]").unwrap(), json!("b"));
    assert_eq!(eval("payload['nested'].x * 10 + 1").unwrap(), json!(21));
    assert_eq!(eval("props['x-y']").unwrap(), json!("z"));
    assert_eq!(
        eval("(payload.temp - 32) * 5 / 9")
            .unwrap()
            .as_f64()
            .map(|v| (v * 100.0).round()),
        Some(-28.0)
    );
    assert_eq!(eval("-payload.nested.x % 3").unwrap(), json!(-2));
    assert_eq!(
        eval("'iot.' + replace(topic, '/', '.')").unwrap(),
        json!("iot.sensors.kitchen.temp")
    );
    assert_eq!(eval("number(props.seq) + 1").unwrap(), json!(18));
    assert_eq!(eval("string(qos) + '!'").unwrap(), json!("1!"));
    assert_eq!(
        eval("coalesce(props.none, props.seq)").unwrap(),
        json!("17")
    );
    assert_eq!(
        eval("if(qos == 1, upper(payload.unit), 'x')").unwrap(),
        json!("C")
    );
    assert_eq!(eval("len(payload.tags) + len('héllo')").unwrap(), json!(7));
    assert_eq!(eval("contains(payload.tags, 'a') && starts_with(topic, 'sensors/') && ends_with(topic, 'temp')").unwrap(), json!(true));
    assert_eq!(eval("json(payload.nested)").unwrap(), json!("{\"x\":2}"));
    assert_eq!(
        eval("sha256('abc')").unwrap(),
        json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
}

#[test]
fn type_mistakes_are_errors_not_guesses() {
    assert!(matches!(eval("payload.unit - 1"), Err(EvalError::Type(_))));
    assert!(matches!(eval("number('abc')"), Err(EvalError::Type(_))));
    assert!(matches!(eval("payload.temp / 0"), Err(EvalError::Type(_))));
    assert_eq!(
        eval("nosuchname"),
        Err(EvalError::UnknownName("nosuchname".into()))
    );
}

#[test]
fn parse_errors_name_the_place() {
    let cases = [
        ("payload.temp >", "ends too early"),
        ("payload.temp > 3)", "unexpected `)`"),
        ("'open", "unterminated string"),
        ("a ? b", "unexpected `?`"),
        ("nosuch(1)", "no function `nosuch`"),
        ("lower(1, 2)", "takes"),
        ("payload.", "field name"),
        ("", "empty"),
    ];
    for (text, expected) in cases {
        let error = parse(text).expect_err(text).to_string();
        assert!(error.contains(expected), "{text}: {error}");
        assert!(error.starts_with("at character "), "{text}: {error}");
    }
    assert_eq!(parse("a ? b").unwrap_err().offset, 2);
}

#[test]
fn precedence() {
    assert_eq!(
        eval("1 + 2 * 3 == 7 && 2 > 1 || false").unwrap(),
        json!(true)
    );
    assert_eq!(eval("1 < 2 == true").unwrap(), json!(true));
    assert_eq!(eval("!false && false").unwrap(), json!(false));
}
