//! The API reference against the running router: every documented operation is served, and
//! what the gateway answers is what the document says it answers.

use reqwest::Method;
use serde_json::{Value, json};

use wxpay_simulator::TEST_APPID;

use crate::support::{Options, TestApp, TestDb, order_body, spawn_app};

/// The document as `/openapi.json` serves it.
async fn document(t: &TestApp) -> Value {
    let r = t.http.get(format!("{}/openapi.json", t.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

/// Every (method, path) the document names.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.push((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

/// Why `value` does not match `schema` (resolving `$ref`s in `doc`), if it does not. Objects
/// are held to their documented fields both ways: a required field missing or a field the
/// document does not name is a mismatch, so that neither can drift from the other.
fn mismatch(doc: &Value, schema: &Value, value: &Value, at: &str) -> Option<String> {
    // The document uses `$ref`, `oneOf` and `type`; anything else would pass unchecked here.
    for unread in ["anyOf", "allOf", "not"] {
        assert!(
            schema.get(unread).is_none(),
            "{at}: a schema with {unread} is not checked: {schema}"
        );
    }
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return mismatch(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(alts) = schema["oneOf"].as_array() {
        return if alts.iter().any(|s| mismatch(doc, s, value, at).is_none()) {
            None
        } else {
            Some(format!("{at}: {value} matches none of {schema}"))
        };
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(value) {
            return Some(format!("{at}: {value} is not one of {values:?}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
        _ => return None,
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if !(types.contains(&kind) || kind == "integer" && types.contains(&"number")) {
        return Some(format!("{at}: {value} is a {kind}, the document says {types:?}"));
    }
    match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| mismatch(doc, &schema["items"], v, &format!("{at}[{i}]"))),
        Value::Object(fields) if schema["properties"].is_object() => {
            let props = schema["properties"].as_object().unwrap();
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap();
                if !fields.contains_key(name) {
                    return Some(format!("{at}: the required field {name} is missing"));
                }
            }
            fields.iter().find_map(|(k, v)| match props.get(k) {
                None => Some(format!("{at}: the field {k} is not in the document")),
                Some(s) => mismatch(doc, s, v, &format!("{at}.{k}")),
            })
        }
        _ => None,
    }
}

/// Asserts that the answer `(status, body)` of `method path` is one the document lists, with
/// a body of the documented schema.
fn assert_documented(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not in the document");
    let answer = &op["responses"][status.to_string()];
    assert!(
        answer.is_object(),
        "{method} {path} answered {status}, which the document does not list: {body}"
    );
    let schema = &answer["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} has no JSON schema: {answer}"
    );
    if let Some(why) = mismatch(doc, schema, body, &format!("{method} {path} {status}")) {
        panic!("{why}\nthe body: {body}");
    }
}

#[tokio::test]
async fn every_documented_operation_is_served_behind_the_bearer_token() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let doc = document(&t).await;
    let ops = operations(&doc);
    assert_eq!(ops.len(), 7, "{ops:?}");
    for (method, path) in ops {
        // A route the router lacked would fall through to 404 `no such path` or 405; a
        // served one meets the token check first.
        let url = format!(
            "{}{}",
            t.url,
            path.replace("{out_trade_no}", "W1234567")
                .replace("{out_refund_no}", "R1")
        );
        let r = t
            .http
            .request(Method::from_bytes(method.as_bytes()).unwrap(), url)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_documented(&doc, &method, &path, status, &body);
        assert_eq!(
            doc["paths"][&path][method.to_lowercase()]["security"],
            json!([{"bearer": []}])
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer"})
    );
    t.stop().await;
}

#[tokio::test]
async fn every_answer_of_a_whole_flow_matches_the_document() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let doc = document(&t).await;
    let mut seen = std::collections::BTreeSet::new();
    let mut check = async |method: Method, path: &str, template: &str, body: Option<Value>, key: Option<&str>| {
        let (status, answer) = t.api(method.clone(), path, body, key).await;
        assert_documented(&doc, method.as_str(), template, status, &answer);
        seen.insert((method.to_string(), template.to_owned()));
        (status, answer)
    };

    let (_, login) = t
        .sim_post("/simulator/login", json!({"appid": TEST_APPID, "user": "bob"}))
        .await;
    let (status, _) = check(
        Method::POST,
        "/v1/openid",
        "/v1/openid",
        Some(json!({"code": login["code"]})),
        None,
    )
    .await;
    assert_eq!(status, 200);
    check(Method::POST, "/v1/openid", "/v1/openid", Some(json!({"code": 7})), None).await;

    let mut body = order_body(1500);
    body["out_trade_no"] = json!("DOC0000001");
    let (status, _) = check(
        Method::POST,
        "/v1/orders",
        "/v1/orders",
        Some(body.clone()),
        Some("k-1"),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = check(
        Method::POST,
        "/v1/orders",
        "/v1/orders",
        Some(body.clone()),
        Some("k-1"),
    )
    .await;
    assert_eq!(status, 201, "the first answer again");
    let (status, _) = check(Method::POST, "/v1/orders", "/v1/orders", Some(body.clone()), None).await;
    assert_eq!(status, 200, "the order of this out_trade_no again");
    body["amount_fen"] = json!(1600);
    let (status, _) = check(Method::POST, "/v1/orders", "/v1/orders", Some(body), Some("k-1")).await;
    assert_eq!(status, 409);
    let (status, _) = check(
        Method::POST,
        "/v1/orders",
        "/v1/orders",
        Some(json!({"amount_fen": "15.00"})),
        None,
    )
    .await;
    assert_eq!(status, 422);

    t.paid_order("DOC0000002", 2000).await;
    let (status, refund) = check(
        Method::POST,
        "/v1/orders/DOC0000002/refunds",
        "/v1/orders/{out_trade_no}/refunds",
        Some(json!({"amount_fen": 500, "reason": "少了一杯"})),
        None,
    )
    .await;
    assert_eq!(status, 201, "{refund}");
    let no = refund["out_refund_no"].as_str().unwrap();
    check(
        Method::GET,
        &format!("/v1/refunds/{no}"),
        "/v1/refunds/{out_refund_no}",
        None,
        None,
    )
    .await;
    check(
        Method::GET,
        "/v1/refunds/R-none",
        "/v1/refunds/{out_refund_no}",
        None,
        None,
    )
    .await;
    let (status, order) = check(
        Method::GET,
        "/v1/orders/DOC0000002",
        "/v1/orders/{out_trade_no}",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(!order["events"].as_array().unwrap().is_empty(), "{order}");
    assert_eq!(order["refunds"].as_array().unwrap().len(), 1, "{order}");
    let (status, _) = check(
        Method::POST,
        "/v1/orders/DOC0000002/close",
        "/v1/orders/{out_trade_no}/close",
        None,
        None,
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = check(
        Method::POST,
        "/v1/orders/DOC0000001/close",
        "/v1/orders/{out_trade_no}/close",
        // The document allows a `null` body.
        Some(Value::Null),
        None,
    )
    .await;
    assert_eq!(status, 200);
    check(
        Method::GET,
        "/v1/orders/NOSUCH0001",
        "/v1/orders/{out_trade_no}",
        None,
        None,
    )
    .await;
    let (status, page) = check(Method::GET, "/v1/orders?limit=1", "/v1/orders", None, None).await;
    assert_eq!(status, 200);
    assert!(page["next_cursor"].is_i64(), "{page}");
    check(Method::GET, "/v1/orders?status=lost", "/v1/orders", None, None).await;
    assert_eq!(seen, operations(&doc).into_iter().collect(), "every operation is tried");
    t.stop().await;
}

#[tokio::test]
async fn the_reference_page_shows_every_operation_and_schema_and_loads_nothing_else() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let doc = document(&t).await;
    let r = t.http.get(format!("{}/docs", t.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let page = r.text().await.unwrap();
    for (method, path) in operations(&doc) {
        assert!(
            page.contains(&format!("{method}</span> <code>{path}</code>")),
            "{method} {path} is not on the page"
        );
    }
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(
            page.contains(&format!("id=\"schema-{name}\"")),
            "the schema {name} is not on the page"
        );
    }
    assert!(page.contains("wx.requestPayment"));
    for outside in ["<script", " src=", "http://", "https://"] {
        assert!(!page.contains(outside), "the page has {outside}");
    }
    t.stop().await;
}

#[tokio::test]
async fn a_request_that_does_not_read_gets_the_json_error_body_the_document_lists() {
    let t = spawn_app(TestDb::sqlite(), Options::default()).await;
    let doc = document(&t).await;
    let cases: [(Method, &str, &str, Option<String>, u16); 8] = [
        // A query parameter of the wrong type, or out of its documented range.
        (Method::GET, "/v1/orders?limit=x", "/v1/orders", None, 422),
        (Method::GET, "/v1/orders?limit=501", "/v1/orders", None, 422),
        (Method::GET, "/v1/orders?limit=0", "/v1/orders", None, 422),
        (Method::GET, "/v1/orders?status=", "/v1/orders", None, 422),
        (
            Method::GET,
            "/v1/orders/W1234567?sync=maybe",
            "/v1/orders/{out_trade_no}",
            None,
            422,
        ),
        // A path that is not UTF-8.
        (Method::GET, "/v1/refunds/%FF", "/v1/refunds/{out_refund_no}", None, 400),
        // A body over the limit (64 KiB).
        (Method::POST, "/v1/orders", "/v1/orders", Some("a".repeat(70_000)), 413),
        (
            Method::POST,
            "/v1/orders/W1234567/refunds",
            "/v1/orders/{out_trade_no}/refunds",
            Some("a".repeat(70_000)),
            413,
        ),
    ];
    for (method, path, template, body, expected) in cases {
        let mut req = t
            .http
            .request(method.clone(), format!("{}{path}", t.url))
            .bearer_auth(crate::support::TOKEN);
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, expected, "{method} {path}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_documented(&doc, method.as_str(), template, status, &body);
    }
    t.stop().await;
}
