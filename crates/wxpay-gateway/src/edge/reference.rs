//! The API reference: the OpenAPI document of `/v1` (`/openapi.json`), generated from the
//! handlers' `#[utoipa::path]` annotations and the types they read and write, and its
//! rendering as one HTML page (`/docs`), made here on the server so that the page needs no
//! script, no CDN and no asset that wxpay does not serve itself.

use std::fmt::Write as _;

use serde_json::Value;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::edge::html::esc;
use utoipa::openapi::{Content, OpenApi, Ref, RefOr};

/// What the document says before its paths, which come from the router ([`super::router`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "wxpay gateway",
        description = "The API of the business backend. Every call needs `Authorization: Bearer <token>` \
                       (a token of `[server] api_tokens`). Money is an integer number of fen (1 yuan = 100 fen) \
                       everywhere. Every error answer is `{\"error\": {\"code\", \"message\", \"request_id\"}}`. \
                       What happens afterwards (`order.paid`, `order.closed`, `refund.succeeded`, `refund.failed`) \
                       reaches the business backend as signed webhook events, not through this API."
    ),
    modifiers(&Bearer),
    tags(
        (name = "orders", description = "Payers, orders and their pay parameters."),
        (name = "refunds", description = "Refunds of paid orders."),
    )
)]
pub(crate) struct ApiDoc;

/// Adds the bearer-token scheme that every operation names.
struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, api: &mut OpenApi) {
        api.info.version = env!("CARGO_PKG_VERSION").to_owned();
        api.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Adds to every operation the answers that come before its handler runs: 400 for a path
/// that is not UTF-8 (on the operations with a path parameter), 401 without the bearer token
/// (the `auth` middleware), and 413 for a body over the limit.
pub(crate) fn add_common_answers(doc: &mut OpenApi) {
    let error = |why: &str| -> RefOr<Response> {
        ResponseBuilder::new()
            .description(why)
            .content("application/json", Content::new(Some(Ref::from_schema_name("Error"))))
            .build()
            .into()
    };
    let unreadable = error("The path is not valid UTF-8.");
    let unauthorized = error("No bearer token, or not one of `[server] api_tokens`.");
    let too_large = error("The body is over 64 KiB.");
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in ops.into_iter().flatten() {
            let answers = &mut op.responses.responses;
            let has_path_parameter = op
                .parameters
                .iter()
                .flatten()
                .any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Path));
            if has_path_parameter {
                answers.entry("400".into()).or_insert_with(|| unreadable.clone());
            }
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                answers.insert("401".into(), unauthorized.clone());
            }
            if op.request_body.is_some() {
                answers.insert("413".into(), too_large.clone());
            }
        }
    }
}

/// The reference page of `doc` (the OpenAPI document as JSON): every operation with its
/// parameters, body and answers, then every schema.
pub(crate) fn render(doc: &Value) -> String {
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    let version = doc["info"]["version"].as_str().unwrap_or("");
    let mut html = String::with_capacity(64 * 1024);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} — API reference</title><style>{STYLE}</style></head><body><main>\
         <h1>{t} <small>{v}</small></h1><p>{d}</p>\
         <p>The machine-readable document: <a href=\"/openapi.json\"><code>/openapi.json</code></a> (OpenAPI {o}).</p>",
        t = esc(title),
        v = esc(version),
        d = prose(doc["info"]["description"].as_str().unwrap_or("")),
        o = esc(doc["openapi"].as_str().unwrap_or("")),
    );
    let operations = operations(doc);
    html.push_str("<nav><h2>Operations</h2><ul>");
    for op in &operations {
        let _ = write!(
            html,
            "<li><a href=\"#{a}\"><span class=\"m {m}\">{M}</span> <code>{p}</code></a> {s}</li>",
            a = op.anchor(),
            m = op.method,
            M = op.method.to_uppercase(),
            p = esc(op.path),
            s = esc(summary(op.body)),
        );
    }
    html.push_str("</ul></nav>");
    for op in &operations {
        operation(&mut html, op);
    }
    html.push_str("<h2 id=\"schemas\">Schemas</h2>");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            let _ = write!(
                html,
                "<section id=\"schema-{a}\"><h3>{n}</h3>",
                a = esc(name),
                n = esc(name)
            );
            schema_body(&mut html, schema);
            html.push_str("</section>");
        }
    }
    html.push_str("</main></body></html>");
    html
}

/// One operation of the document.
struct Operation<'a> {
    method: &'a str,
    path: &'a str,
    body: &'a Value,
}

impl Operation<'_> {
    fn anchor(&self) -> String {
        let path: String = self
            .path
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("op-{}{}", self.method, path)
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn operations(doc: &Value) -> Vec<Operation<'_>> {
    let mut ops = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in METHODS {
                if let Some(body) = item.get(method) {
                    ops.push(Operation { method, path, body });
                }
            }
        }
    }
    ops
}

/// The operation's first line (utoipa puts a doc comment's first paragraph in `summary`).
fn summary(op: &Value) -> &str {
    op["summary"].as_str().unwrap_or("")
}

fn operation(html: &mut String, op: &Operation<'_>) {
    let b = op.body;
    let _ = write!(
        html,
        "<section class=\"op\" id=\"{a}\"><h2><span class=\"m {m}\">{M}</span> <code>{p}</code></h2><p><strong>{s}</strong></p>",
        a = op.anchor(),
        m = op.method,
        M = op.method.to_uppercase(),
        p = esc(op.path),
        s = prose(summary(b)),
    );
    if let Some(d) = b["description"].as_str() {
        let _ = write!(html, "<p>{}</p>", prose(d));
    }
    if b["security"].as_array().is_some_and(|s| !s.is_empty()) {
        html.push_str("<p class=\"auth\">Needs <code>Authorization: Bearer &lt;token&gt;</code>.</p>");
    }
    if let Some(params) = b["parameters"].as_array().filter(|p| !p.is_empty()) {
        html.push_str(
            "<h4>Parameters</h4><table><tr><th>name</th><th>in</th><th>type</th><th>required</th><th>what</th></tr>",
        );
        for p in params {
            let _ = write!(
                html,
                "<tr><td><code>{n}</code></td><td>{i}</td><td>{t}</td><td>{r}</td><td>{d}</td></tr>",
                n = esc(p["name"].as_str().unwrap_or("")),
                i = esc(p["in"].as_str().unwrap_or("")),
                t = type_of(&p["schema"]),
                r = if p["required"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                d = prose(p["description"].as_str().unwrap_or("")),
            );
        }
        html.push_str("</table>");
    }
    if let Some(content) = b["requestBody"]["content"].as_object() {
        html.push_str("<h4>Request body</h4>");
        if let Some(d) = b["requestBody"]["description"].as_str() {
            let _ = write!(html, "<p>{}</p>", prose(d));
        }
        for (media, m) in content {
            let _ = write!(html, "<p><code>{}</code>: {}</p>", esc(media), type_of(&m["schema"]));
        }
    }
    if let Some(responses) = b["responses"].as_object() {
        html.push_str("<h4>Answers</h4><table><tr><th>status</th><th>body</th><th>when</th></tr>");
        for (status, r) in responses {
            let body = r["content"]
                .as_object()
                .and_then(|c| c.values().next())
                .map(|m| type_of(&m["schema"]))
                .unwrap_or_default();
            let _ = write!(
                html,
                "<tr><td><code>{s}</code></td><td>{body}</td><td>{d}</td></tr>",
                s = esc(status),
                d = prose(r["description"].as_str().unwrap_or("")),
            );
        }
        html.push_str("</table>");
    }
    html.push_str("</section>");
}

/// A schema of `components`: its description, then its properties or its values.
fn schema_body(html: &mut String, schema: &Value) {
    if let Some(d) = schema["description"].as_str() {
        let _ = write!(html, "<p>{}</p>", prose(d));
    }
    let Some(props) = schema["properties"].as_object() else {
        let _ = write!(html, "<p>{}</p>", type_of(schema));
        return;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    html.push_str("<table><tr><th>field</th><th>type</th><th>always there</th><th>what</th></tr>");
    for (name, p) in props {
        let _ = write!(
            html,
            "<tr><td><code>{n}</code></td><td>{t}</td><td>{r}</td><td>{d}</td></tr>",
            n = esc(name),
            t = type_of(p),
            r = if required.contains(&name.as_str()) { "yes" } else { "no" },
            d = prose(p["description"].as_str().unwrap_or("")),
        );
    }
    html.push_str("</table>");
}

/// A schema's type in a few words, with links to the named schemas it uses.
fn type_of(s: &Value) -> String {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{n}\">{n}</a>", n = esc(name));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(alts) = s[key].as_array() {
            let parts: Vec<String> = alts.iter().map(type_of).collect();
            return parts.join(if key == "allOf" { " and " } else { " or " });
        }
    }
    if let Some(values) = s["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("<code>{}</code>", esc(v.as_str().unwrap_or(&v.to_string()))))
            .collect();
        return format!("one of {}", values.join(", "));
    }
    let names: Vec<&str> = match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let parts: Vec<String> = names
        .iter()
        .map(|&t| match t {
            "array" => format!("array of {}", type_of(&s["items"])),
            "integer" | "number" => match (s["format"].as_str(), s["minimum"].as_f64()) {
                (_, Some(min)) => format!("{t} ≥ {min}"),
                _ => t.to_owned(),
            },
            "string" => match s["format"].as_str() {
                Some(f) => format!("string ({})", esc(f)),
                None => "string".to_owned(),
            },
            other => esc(other),
        })
        .collect();
    if parts.is_empty() {
        "any".to_owned()
    } else {
        parts.join(" or ")
    }
}

/// Text from the document as HTML: escaped, with `code` spans kept.
fn prose(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", esc(part));
        } else {
            out.push_str(&esc(part).replace("\n\n", "</p><p>"));
        }
    }
    out
}

const STYLE: &str = "body{font:15px/1.5 system-ui,-apple-system,'PingFang SC','Microsoft YaHei',sans-serif;\
color:#1f2328;margin:0;background:#f6f8fa}main{max-width:960px;margin:0 auto;padding:24px;background:#fff}\
h1 small{font-size:60%;color:#666}code{font:13px ui-monospace,Menlo,Consolas,monospace;background:#eff1f3;\
padding:1px 4px;border-radius:4px}table{border-collapse:collapse;width:100%;margin:8px 0}\
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f6f8fa}\
section.op{border-top:1px solid #d0d7de;margin-top:24px}nav ul{list-style:none;padding:0}\
.m{display:inline-block;min-width:48px;text-align:center;border-radius:4px;color:#fff;font-size:12px;\
font-weight:600;padding:1px 6px}.get{background:#0969da}.post{background:#1a7f37}.put,.patch{background:#9a6700}\
.delete{background:#cf222e}.auth{color:#666}a{color:#0969da}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_document_is_escaped_and_keeps_its_code_spans() {
        assert_eq!(
            prose("a <b> & `x<y>` \"q\""),
            "a &lt;b&gt; &amp; <code>x&lt;y&gt;</code> &quot;q&quot;"
        );
    }

    #[test]
    fn types_name_their_schemas_arrays_enums_and_nulls() {
        let t = |v: Value| type_of(&v);
        assert_eq!(
            t(serde_json::json!({"$ref": "#/components/schemas/Order"})),
            "<a href=\"#schema-Order\">Order</a>"
        );
        assert_eq!(t(serde_json::json!({"type": ["string", "null"]})), "string or null");
        assert_eq!(
            t(serde_json::json!({"type": "array", "items": {"$ref": "#/components/schemas/Event"}})),
            "array of <a href=\"#schema-Event\">Event</a>"
        );
        assert_eq!(
            t(serde_json::json!({"type": "string", "enum": ["paid", "closed"]})),
            "one of <code>paid</code>, <code>closed</code>"
        );
        assert_eq!(
            t(serde_json::json!({"type": "integer", "format": "int64", "minimum": 1})),
            "integer ≥ 1"
        );
        assert_eq!(t(serde_json::json!({})), "any");
    }
}
