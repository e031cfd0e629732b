//! The collector over real HTTP, against SQLite and against a real PostgreSQL server (when
//! `FLYWHEEL_TEST_DATABASE_URL` names one; `.ci/run` starts one and sets it). Every response
//! checked here is also validated against `docs/collector-openapi.yaml`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flywheel::collector::{Collector, CollectorConfig};
use serde_json::{Value, json};

const WRITE: &str = "test-write-token-0123456789";
const READ: &str = "test-read-token-0123456789";

#[derive(Clone, Debug)]
enum Backend {
    Sqlite,
    Postgres(String),
}

/// SQLite always; PostgreSQL when a server is given (required in CI).
fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Sqlite];
    match std::env::var("FLYWHEEL_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => out.push(Backend::Postgres(url)),
        _ => {
            assert!(
                std::env::var_os("FLYWHEEL_REQUIRE_POSTGRES").is_none(),
                "FLYWHEEL_TEST_DATABASE_URL is unset but FLYWHEEL_REQUIRE_POSTGRES asks for PostgreSQL"
            );
            eprintln!("PostgreSQL not configured (FLYWHEEL_TEST_DATABASE_URL); testing SQLite only");
        }
    }
    out
}

/// A fresh database on the server for one test.
async fn fresh_database(admin_url: &str) -> String {
    let (client, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {admin_url}: {e}"));
    tokio::spawn(conn);
    let name = format!("fw_{}", uuid::Uuid::new_v4().simple());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap_or_else(|e| panic!("create database: {e}"));
    with_database(admin_url, &name)
}

fn with_database(url: &str, name: &str) -> String {
    // Key-value form (`host=... dbname=...`) or a URL (`postgres://.../db`).
    if url.contains("://") {
        let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
        let root = match base.rfind('/') {
            Some(i) if i > base.find("://").map_or(0, |j| j + 2) => &base[..i],
            _ => base,
        };
        match query {
            Some(q) => format!("{root}/{name}?{q}"),
            None => format!("{root}/{name}"),
        }
    } else {
        format!("{url} dbname={name}")
    }
}

struct Running {
    collector: Option<Collector>,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    /// The data directory.
    data: PathBuf,
    database_url: Option<String>,
    /// Whether `stop` drops the database (a replica leaves it to the first collector).
    owns_database: bool,
}

impl Running {
    async fn start(backend: &Backend) -> Running {
        Self::start_with(backend, |_| {}).await
    }

    async fn start_with(backend: &Backend, tune: impl FnOnce(&mut CollectorConfig)) -> Running {
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres(admin) => Some(fresh_database(admin).await),
        };
        Self::start_on(database_url, true, tune).await
    }

    /// Another replica on the same PostgreSQL database, with a data directory of its own.
    async fn replica(&self) -> Running {
        assert!(self.database_url.is_some(), "replicas share a PostgreSQL database");
        Self::start_on(self.database_url.clone(), false, |_| {}).await
    }

    async fn start_on(
        database_url: Option<String>,
        owns_database: bool,
        tune: impl FnOnce(&mut CollectorConfig),
    ) -> Running {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let token_file = dir.path().join("tokens");
        std::fs::write(&token_file, format!("{WRITE}\n{READ} read\n")).unwrap_or_else(|e| panic!("{e}"));
        let addr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        let data = dir.path().join("data");
        let mut config = CollectorConfig::new(addr, data.clone());
        config.token_file = Some(token_file);
        config.database_url = database_url.clone();
        tune(&mut config);
        let collector = Collector::start(config).await.unwrap_or_else(|e| panic!("start: {e}"));
        let base = format!("http://{}", collector.addr());
        Running {
            collector: Some(collector),
            base,
            http: flywheel::http_client::client(),
            _dir: dir,
            data,
            database_url,
            owns_database,
        }
    }

    /// Stops the server and keeps the database.
    async fn halt(&mut self) {
        if let Some(c) = self.collector.take() {
            c.shutdown().await;
        }
    }

    async fn stop(mut self) {
        self.halt().await;
        // Each test's database goes with it.
        if !self.owns_database {
            return;
        }
        if let (Some(url), Ok(admin)) = (&self.database_url, std::env::var("FLYWHEEL_TEST_DATABASE_URL"))
            && let Some(name) = url.rsplit(['/', '=']).next().and_then(|n| n.split('?').next())
            && let Ok((client, conn)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _dropped = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).bearer_auth(WRITE).json(&body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)).bearer_auth(READ)).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap_or_else(|e| panic!("request: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A dataset file: status, `Content-Length` and `ETag` headers, and the bytes.
    async fn file(&self, id: &str, name: &str) -> (u16, Option<u64>, Option<String>, Vec<u8>) {
        let response = self
            .http
            .get(format!("{}/v1/datasets/{id}/files/{name}", self.base))
            .bearer_auth(READ)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        let header = |h: reqwest::header::HeaderName| {
            response.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string)
        };
        let length = header(reqwest::header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
        let etag = header(reqwest::header::ETAG);
        let bytes = response.bytes().await.unwrap_or_else(|e| panic!("reading {name}: {e}"));
        (status, length, etag, bytes.to_vec())
    }

    /// Runs one statement on the collector's database (the PostgreSQL database, or the SQLite
    /// file); a query answers its first column of its first row, any other statement the rows
    /// it changed.
    async fn sql(&self, statement: &str) -> i64 {
        let query = statement.trim_start().to_ascii_uppercase().starts_with("SELECT");
        match &self.database_url {
            Some(url) => {
                let (client, conn) =
                    tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("{e}"));
                tokio::spawn(conn);
                if query {
                    let row = client.query_one(statement, &[]).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
                    row.try_get(0).unwrap_or_else(|e| panic!("{statement}: {e}"))
                } else {
                    client.execute(statement, &[]).await.unwrap_or_else(|e| panic!("{statement}: {e}")) as i64
                }
            }
            None => {
                let db = rusqlite::Connection::open(self.data.join("collector.db")).unwrap_or_else(|e| panic!("{e}"));
                db.busy_timeout(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
                if query {
                    db.query_row(statement, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{statement}: {e}"))
                } else {
                    db.execute(statement, []).unwrap_or_else(|e| panic!("{statement}: {e}")) as i64
                }
            }
        }
    }

    async fn stats(&self, deployment: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/stats?namespace=ns&deployment={deployment}")).await;
        assert_eq!(status, 200, "{body}");
        check_schema("/v1/stats", "get", 200, &body);
        body
    }
}

fn version<'a>(stats: &'a Value, v: &str) -> &'a Value {
    stats["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|x| x["version"] == v))
        .unwrap_or_else(|| panic!("no version {v} in {stats}"))
}

fn thumbs(id: &str, deployment: &str, version: &str, up: bool) -> Value {
    json!({"id": id, "namespace": "ns", "deployment": deployment, "version": version, "kind": "thumbs", "value": up})
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document, and a small validator of the JSON Schema subset it uses.

fn openapi() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/collector-openapi.yaml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut at = doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            assert!(!at.is_null(), "dangling $ref {r}");
            resolve(doc, at)
        }
        None => schema,
    }
}

fn validate(doc: &Value, schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(doc, s, value, path)?;
        }
    }
    if let Some(any) = schema.get("oneOf").and_then(Value::as_array)
        && !any.iter().any(|s| validate(doc, s, value, path).is_ok())
    {
        return Err(format!("{path}: matches none of oneOf"));
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{path}: {value} is not {types:?}"));
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(value)
    {
        return Err(format!("{path}: {value} not in {e:?}"));
    }
    if let Some(obj) = value.as_object() {
        for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(k) = r.as_str()
                && !obj.contains_key(k)
            {
                return Err(format!("{path}: missing required {k}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(doc, s, v, &format!("{path}.{k}"))?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => return Err(format!("{path}: unexpected property {k}")),
                    Some(s @ Value::Object(_)) => validate(doc, s, v, &format!("{path}.{k}"))?,
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            validate(doc, items, v, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

/// Checks a response body against the document's schema for the path, method and status.
fn check_schema(path: &str, method: &str, status: u16, body: &Value) {
    let doc = openapi();
    let op = &doc["paths"][path][method];
    assert!(!op.is_null(), "{method} {path} is not documented");
    let response = &op["responses"][status.to_string()];
    assert!(!response.is_null(), "{method} {path} answered {status}, which is not documented");
    let response = resolve(doc, response);
    if let Some(schema) = response.pointer("/content/application~1json/schema")
        && let Err(e) = validate(doc, schema, body, "$")
    {
        panic!("{method} {path} {status}: the body does not match the document: {e}\n{body}");
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_documented_endpoint_is_served_and_every_served_one_documented() {
    let r = Running::start(&Backend::Sqlite).await;
    let doc = openapi();
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().into_iter().flatten() {
        for method in ops.as_object().into_iter().flatten().map(|(m, _)| m.clone()) {
            documented.push((path.clone(), method));
        }
    }
    assert!(documented.len() >= 12, "{documented:?}");
    for (path, method) in &documented {
        let concrete =
            path.replace("{id}", "ds-00000000000000000000").replace("{name}", "sft.jsonl").replace("{key}", "u1");
        let url = format!("{}{concrete}", r.base);
        let request = match method.as_str() {
            "get" => r.http.get(&url),
            "post" => r.http.post(&url).header("content-type", "application/json").body("{}"),
            "delete" => r.http.delete(&url),
            other => panic!("unexpected method {other}"),
        };
        let response = request.bearer_auth(WRITE).send().await.unwrap_or_else(|e| panic!("{e}"));
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path}");
        assert!(!(status == 404 && body["error"]["message"] == "no such endpoint"), "{method} {path} is not served");
    }
    // And a path that is not documented is not served.
    let (status, body) = r.get("/v1/everything").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "NotFound");
    r.stop().await;
}

#[tokio::test]
async fn single_events_are_idempotent_by_id() {
    for b in backends() {
        let r = Running::start(&b).await;
        let e1 = thumbs("e1", "md", "v1", true);
        let (status, body) = r.post("/v1/feedback", e1.clone()).await;
        assert_eq!(status, 201, "{b:?} {body}");
        check_schema("/v1/feedback", "post", 201, &body);
        // A retry: the same id and payload, keys in another order.
        let retry: Value = serde_json::from_str(
            r#"{"value":true,"kind":"thumbs","version":"v1","deployment":"md","namespace":"ns","id":"e1"}"#,
        )
        .unwrap_or(Value::Null);
        let (status, body) = r.post("/v1/feedback", retry).await;
        assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")), "{b:?} {body}");
        check_schema("/v1/feedback", "post", 200, &body);
        let (status, body) = r.post("/v1/feedback", thumbs("e1", "md", "v1", false)).await;
        assert_eq!(status, 422, "{b:?} {body}");
        assert_eq!((body["error"]["code"].as_str(), body["error"]["field"].as_str()), (Some("IdConflict"), Some("id")));
        check_schema("/v1/feedback", "post", 422, &body);
        let stats = r.stats("md").await;
        assert_eq!(version(&stats, "v1")["total"], 1, "{b:?} {stats}");
        assert_eq!(version(&stats, "v1")["positiveRate"]["numerator"], 1);
        r.stop().await;
    }
}

#[tokio::test]
async fn batches_answer_item_by_item() {
    for b in backends() {
        let r = Running::start(&b).await;
        let (status, _) = r.post("/v1/feedback", thumbs("a0", "md", "v1", true)).await;
        assert_eq!(status, 201);
        let batch = json!([
            thumbs("a1", "md", "v1", true),
            thumbs("a0", "md", "v1", true),
            thumbs("a0", "md", "v1", false),
            {"id": "a2", "kind": "smile", "value": 1, "interactionId": "i1"},
            thumbs("a3", "md", "v2", false),
            thumbs("a3", "md", "v2", false),
        ]);
        let (status, body) = r.post("/v1/feedback", batch).await;
        assert_eq!(status, 207, "{b:?} {body}");
        check_schema("/v1/feedback", "post", 207, &body);
        let statuses: Vec<i64> =
            body["results"].as_array().into_iter().flatten().filter_map(|x| x["status"].as_i64()).collect();
        assert_eq!(statuses, [201, 200, 422, 422, 201, 200], "{b:?} {body}");
        assert_eq!(
            (body["created"].as_i64(), body["duplicates"].as_i64(), body["rejected"].as_i64()),
            (Some(2), Some(2), Some(2))
        );
        assert_eq!(body["results"][3]["error"]["field"], "kind");

        // NDJSON, with one line that is not JSON.
        let ndjson = format!(
            "{}\nnot json\n{}\n",
            thumbs("n1", "md", "v1", true),
            json!({"id":"n2","namespace":"ns","deployment":"md","version":"v1","kind":"rating","value":4,"scale":{"min":1,"max":5}})
        );
        let (status, body) = r
            .send(
                r.http
                    .post(format!("{}/v1/feedback", r.base))
                    .bearer_auth(WRITE)
                    .header("content-type", "application/x-ndjson")
                    .body(ndjson),
            )
            .await;
        assert_eq!(status, 207, "{body}");
        let statuses: Vec<i64> =
            body["results"].as_array().into_iter().flatten().filter_map(|x| x["status"].as_i64()).collect();
        assert_eq!(statuses, [201, 422, 201]);

        let too_many: Vec<Value> = (0..1001).map(|i| thumbs(&format!("x{i}"), "md", "v1", true)).collect();
        let (status, body) = r.post("/v1/feedback", Value::Array(too_many)).await;
        assert_eq!(status, 413, "{body}");
        let stats = r.stats("md").await;
        assert_eq!(version(&stats, "v1")["total"], 4, "{b:?}: a0, a1, n1, n2 {stats}");
        assert_eq!(version(&stats, "v2")["total"], 1);
        r.stop().await;
    }
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_harms_nothing() {
    for b in backends() {
        let r = Running::start_with(&b, |c| c.max_body_bytes = 64 * 1024).await;
        let (status, _) = r.post("/v1/feedback", thumbs("keep", "md", "v1", true)).await;
        assert_eq!(status, 201);
        let url = format!("{}/v1/feedback", r.base);
        let raw = |body: &'static str, ctype: &'static str| {
            r.http.post(&url).bearer_auth(WRITE).header("content-type", ctype).body(body)
        };
        let cases: Vec<(reqwest::RequestBuilder, u16, &str, Option<&str>)> = vec![
            (raw("{\"id\":", "application/json"), 400, "MalformedJSON", None),
            (
                raw("{\"id\":\"x\",\"kind\":\"thumbs\",\"value\":\"yes\",\"interactionId\":\"i\"}", "application/json"),
                422,
                "InvalidField",
                Some("value"),
            ),
            (
                raw("{\"id\":7,\"kind\":\"thumbs\",\"value\":true,\"interactionId\":\"i\"}", "application/json"),
                422,
                "InvalidField",
                Some("id"),
            ),
            (
                raw("{\"id\":\"x\",\"kind\":\"love\",\"value\":true,\"interactionId\":\"i\"}", "application/json"),
                422,
                "InvalidField",
                Some("kind"),
            ),
            (raw("{}", "text/plain"), 415, "UnsupportedMediaType", None),
            (r.http.post(&url).header("content-type", "application/json").body("{}"), 401, "Unauthorized", None),
            (
                r.http
                    .post(&url)
                    .bearer_auth("not-a-token-at-all")
                    .header("content-type", "application/json")
                    .body("{}"),
                401,
                "Unauthorized",
                None,
            ),
            (
                r.http.post(&url).bearer_auth(READ).header("content-type", "application/json").body("{}"),
                403,
                "Forbidden",
                None,
            ),
            (
                r.http.post(&url).bearer_auth(WRITE).header("content-type", "application/json").body(format!(
                    "{{\"id\":\"big\",\"kind\":\"correction\",\"value\":\"{}\",\"interactionId\":\"i\"}}",
                    "x".repeat(100 * 1024)
                )),
                413,
                "PayloadTooLarge",
                None,
            ),
            (
                r.http.post(&url).bearer_auth(WRITE).json(&thumbs("keep", "md", "v1", false)),
                422,
                "IdConflict",
                Some("id"),
            ),
        ];
        for (i, (request, want, code, field)) in cases.into_iter().enumerate() {
            let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
            let status = response.status().as_u16();
            if status == 401 {
                assert!(response.headers().contains_key("www-authenticate"), "case {i}: 401 names the scheme");
            }
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(status, want, "{b:?} case {i}: {body}");
            assert_eq!(body["error"]["code"], code, "case {i}: {body}");
            assert_eq!(body["error"]["field"].as_str(), field, "case {i}: {body}");
            check_schema("/v1/feedback", "post", status, &body);
        }
        let stats = r.stats("md").await;
        assert_eq!(version(&stats, "v1")["total"], 1, "{b:?}: only the first event is stored {stats}");
        assert_eq!(version(&stats, "v1")["positiveRate"]["numerator"], 1, "the stored event is unchanged");
        let (status, body) = r.get("/v1/stats?namespace=ns").await;
        assert_eq!(status, 400, "a missing parameter is named: {body}");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains("deployment"), "{body}");
        r.stop().await;
    }
}

#[tokio::test]
async fn statistics_per_version_with_the_counts_behind_each_rate() {
    for b in backends() {
        let r = Running::start(&b).await;
        let interactions: Vec<Value> = (0..4)
            .map(|i| {
                json!({"id": format!("i{i}"), "namespace": "ns", "deployment": "md", "version": if i < 3 { "v1" } else { "v2" },
                       "prompt": [{"role": "user", "content": format!("question {i}")}], "answer": format!("answer {i}"), "latencyMs": 40})
            })
            .collect();
        // Feedback on i3 arrives before its interaction: it is joined when the interaction lands.
        let early = json!({"id": "f-early", "interactionId": "i3", "kind": "thumbs", "value": true});
        assert_eq!(r.post("/v1/feedback", early).await.0, 201);
        let (status, body) = r.post("/v1/interactions", Value::Array(interactions)).await;
        assert_eq!(status, 207, "{body}");
        check_schema("/v1/interactions", "post", 207, &body);
        let feedback = json!([
            {"id": "f1", "interactionId": "i0", "kind": "thumbs", "value": true},
            {"id": "f2", "interactionId": "i1", "kind": "thumbs", "value": false},
            {"id": "f3", "interactionId": "i2", "kind": "rating", "value": 9, "scale": {"min": 0, "max": 10}},
            {"id": "f4", "interactionId": "i2", "kind": "rating", "value": 2},
            {"id": "f5", "interactionId": "i1", "kind": "correction", "value": "the right answer"},
            {"id": "f6", "interactionId": "i0", "kind": "error", "value": "timeout"},
            {"id": "f7", "interactionId": "i0", "kind": "label", "value": "helpful"},
            {"id": "f8", "interactionId": "i1", "kind": "alternative", "value": {"candidates": ["a", "b"], "chosen": 1}},
        ]);
        let (status, body) = r.post("/v1/feedback", feedback).await;
        assert_eq!((status, body["created"].as_i64()), (207, Some(8)), "{body}");
        let stats = r.stats("md").await;
        let v1 = version(&stats, "v1");
        assert_eq!(v1["total"], 8);
        assert_eq!(v1["interactions"], 3);
        assert_eq!(
            v1["counts"],
            json!({"thumbs": 2, "rating": 2, "correction": 1, "error": 1, "label": 1, "alternative": 1})
        );
        // positive: f1, f3 (0.9); negative: f2, f4 (0.25), f5, f6
        assert_eq!(v1["positiveRate"], json!({"value": 2.0 / 6.0, "numerator": 2, "denominator": 6}));
        assert_eq!(v1["ratings"], 2);
        assert!((v1["meanRating"].as_f64().unwrap_or(0.0) - (0.9 + 0.25) / 2.0).abs() < 1e-9, "{v1}");
        assert_eq!(v1["correctionRate"], json!({"value": 1.0 / 8.0, "numerator": 1, "denominator": 8}));
        assert_eq!(v1["errorRate"]["numerator"], 1);
        let v2 = version(&stats, "v2");
        assert_eq!(
            (v2["total"].as_i64(), v2["interactions"].as_i64()),
            (Some(1), Some(1)),
            "the early feedback joined v2"
        );

        let (_, lenient) = r
            .get("/v1/stats?namespace=ns&deployment=md&correctionIsNegative=false&errorIsNegative=false&positiveLabels=helpful")
            .await;
        assert_eq!(version(&lenient, "v1")["positiveRate"]["denominator"], 5, "{lenient}");
        assert_eq!(version(&lenient, "v1")["positiveRate"]["numerator"], 3);

        // A window that ends before everything holds nothing.
        let (_, old) =
            r.get("/v1/stats?namespace=ns&deployment=md&from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z").await;
        assert_eq!(old["versions"], json!([]), "{old}");
        r.stop().await;
    }
}

#[tokio::test]
async fn the_change_feed_answers_within_a_second_of_a_commit() {
    for b in backends() {
        let r = Running::start(&b).await;
        let first = r.stats("md").await;
        let cursor = first["cursor"].as_i64().unwrap_or(-1);
        let url = format!("{}/v1/stats/watch?namespace=ns&deployment=md&cursor={cursor}&timeoutSeconds=30", r.base);
        let http = r.http.clone();
        let started = Instant::now();
        let waiter = tokio::spawn(async move {
            let response = http.get(url).bearer_auth(READ).send().await.unwrap_or_else(|e| panic!("{e}"));
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (started.elapsed(), body)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "the watch waits while nothing changes");
        // Another deployment's event does not wake it for good.
        assert_eq!(r.post("/v1/feedback", thumbs("other", "elsewhere", "v1", true)).await.0, 201);
        let posted = Instant::now();
        assert_eq!(r.post("/v1/feedback", thumbs("w1", "md", "v1", true)).await.0, 201);
        let (elapsed, body) = waiter.await.unwrap_or_else(|e| panic!("{e}"));
        check_schema("/v1/stats/watch", "get", 200, &body);
        assert_eq!(body["changed"], true, "{b:?} {body}");
        assert!(body["cursor"].as_i64().unwrap_or(0) > cursor);
        assert_eq!(version(&body, "v1")["total"], 1);
        assert!(elapsed < Duration::from_secs(10), "answered after the commit, not at the 30 s timeout: {elapsed:?}");
        eprintln!("{b:?}: change seen {:?} after the post", posted.elapsed());
        // A watch with nothing new times out with changed=false.
        let cursor = body["cursor"].as_i64().unwrap_or(0);
        let (status, body) =
            r.get(&format!("/v1/stats/watch?namespace=ns&deployment=md&cursor={cursor}&timeoutSeconds=1")).await;
        assert_eq!((status, body["changed"].as_bool()), (200, Some(false)), "{body}");
        r.stop().await;
    }
}

fn read_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

#[tokio::test]
async fn a_dataset_snapshot_holds_exactly_the_expected_rows() {
    for b in backends() {
        let r = Running::start(&b).await;
        let t = |s: u32| format!("2026-11-01T00:00:{s:02}Z");
        let mut interactions = Vec::new();
        for i in 0..6 {
            interactions.push(json!({"id": format!("i{i}"), "namespace": "ns", "deployment": "md", "version": "v1",
                "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": format!("q{i}")}],
                "answer": format!("a{i}"), "timestamp": t(i)}));
        }
        assert_eq!(r.post("/v1/interactions", Value::Array(interactions)).await.0, 207);
        let feedback = json!([
            {"id": "c0", "interactionId": "i0", "kind": "correction", "value": "better0", "timestamp": t(10)},
            {"id": "p1", "interactionId": "i1", "kind": "thumbs", "value": true, "timestamp": t(11)},
            {"id": "n2", "interactionId": "i2", "kind": "thumbs", "value": false, "timestamp": t(12)},
            {"id": "alt3", "interactionId": "i3", "kind": "alternative", "value": {"candidates": ["x3", "y3", "z3"], "chosen": 2}, "timestamp": t(13)},
            {"id": "c4", "interactionId": "i4", "kind": "correction", "value": "better4", "timestamp": t(14)},
            {"id": "r5", "interactionId": "i5", "kind": "rating", "value": 5, "timestamp": t(15)},
            {"id": "c4again", "interactionId": "i4", "kind": "correction", "value": "better4", "timestamp": t(16)},
        ]);
        assert_eq!(r.post("/v1/feedback", feedback).await.0, 207);
        let request = json!({"namespace": "ns", "deployment": "md", "from": t(0), "to": t(59),
                             "recipe": {"heldOutFraction": 0.25, "minRows": 2}});
        let (status, manifest) = r.post("/v1/datasets", request.clone()).await;
        assert_eq!(status, 201, "{b:?} {manifest}");
        check_schema("/v1/datasets", "post", 201, &manifest);
        let id = manifest["id"].as_str().unwrap_or_default().to_string();
        let file = |name: &str| {
            let url = format!("{}/v1/datasets/{id}/files/{name}", r.base);
            let http = r.http.clone();
            async move {
                let response = http.get(url).bearer_auth(READ).send().await.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(response.status().as_u16(), 200);
                response.text().await.unwrap_or_default()
            }
        };
        let sft: Vec<Value> = read_lines(&file("sft.jsonl").await);
        let sft_held: Vec<Value> = read_lines(&file("sft.heldout.jsonl").await);
        let dpo: Vec<Value> = read_lines(&file("dpo.jsonl").await);
        let dpo_held: Vec<Value> = read_lines(&file("dpo.heldout.jsonl").await);
        let target = |r: &Value| {
            r["messages"].as_array().and_then(|m| m.last()).map(|m| m["content"].clone()).unwrap_or_default()
        };
        // SFT rows in time order: c0 (better0), p1 (a1), c4 (better4; c4again is a duplicate), r5 (a5);
        // n2 is a thumbs down and gives nothing. 25% held out: r5, the newest. c4's pair is the
        // newest DPO pair and is held out, so its prompt (q4) leaves the SFT training split too.
        assert_eq!(sft.iter().map(target).collect::<Vec<_>>(), [json!("better0"), json!("a1")], "{b:?}");
        assert_eq!(sft_held.iter().map(target).collect::<Vec<_>>(), [json!("a5")]);
        assert_eq!(sft[0]["messages"][0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(sft[0]["source"], "correction");
        assert_eq!(sft[1]["source"], "positive");
        // DPO pairs: c0 (better0 > a0), alt3 (z3 > x3, z3 > y3), c4 (better4 > a4); the newest held out.
        let pair = |r: &Value| (r["chosen"][0]["content"].clone(), r["rejected"][0]["content"].clone());
        assert_eq!(
            dpo.iter().map(pair).collect::<Vec<_>>(),
            [(json!("better0"), json!("a0")), (json!("z3"), json!("x3")), (json!("z3"), json!("y3"))]
        );
        assert_eq!(dpo_held.iter().map(pair).collect::<Vec<_>>(), [(json!("better4"), json!("a4"))]);
        // No held-out prompt is trained on.
        let prompt_of_sft = |r: &Value| {
            let msgs = r["messages"].as_array().cloned().unwrap_or_default();
            Value::Array(msgs[..msgs.len().saturating_sub(1)].to_vec()).to_string()
        };
        let held: HashSet<String> =
            dpo_held.iter().map(|r| r["prompt"].to_string()).chain(sft_held.iter().map(prompt_of_sft)).collect();
        for row in &sft {
            assert!(!held.contains(&prompt_of_sft(row)), "{row}");
        }
        for row in &dpo {
            assert!(!held.contains(&row["prompt"].to_string()), "{row}");
        }
        assert_eq!(manifest["counts"], json!({"sft": 2, "dpo": 3, "heldOut": 2}));

        // The digest: sha256 of SHA256SUMS, which lists each file's sha256.
        let sums = file("SHA256SUMS").await;
        use sha2::Digest;
        assert_eq!(manifest["sha256"], hex::encode(sha2::Sha256::digest(sums.as_bytes())));
        for line in sums.lines() {
            let (digest, name) = line.split_once("  ").unwrap_or_default();
            assert_eq!(digest, hex::encode(sha2::Sha256::digest(file(name).await.as_bytes())), "{name}");
        }
        // The same snapshot twice: the same id and sha256, answered 200.
        let (status, again) = r.post("/v1/datasets", request).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(
            (again["id"].clone(), again["sha256"].clone()),
            (manifest["id"].clone(), manifest["sha256"].clone())
        );
        let (status, described) = r.get(&format!("/v1/datasets/{id}")).await;
        assert_eq!(status, 200);
        check_schema("/v1/datasets/{id}", "get", 200, &described);
        assert_eq!(described["sha256"], manifest["sha256"]);

        let (status, body) = r
            .post(
                "/v1/datasets",
                json!({"namespace": "ns", "deployment": "md", "to": t(59), "recipe": {"minRows": 1000}}),
            )
            .await;
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some("NotEnoughRows")), "{body}");
        assert_eq!(body["counts"]["sft"], 2);
        let (status, body) = r
            .post("/v1/datasets", json!({"namespace": "ns", "deployment": "md", "recipe": {"heldOutFraction": 0.9}}))
            .await;
        assert_eq!((status, body["error"]["field"].as_str()), (422, Some("recipe.heldOutFraction")), "{body}");
        let (status, _) = r.get("/v1/datasets/ds-ffffffffffffffffffff").await;
        assert_eq!(status, 404);
        r.stop().await;
    }
}

#[tokio::test]
async fn retention_purges_and_a_subject_can_be_erased() {
    for b in backends() {
        let r = Running::start_with(&b, |c| {
            c.retention = Duration::from_secs(3600);
            c.purge_interval = Duration::from_millis(200);
        })
        .await;
        let old = k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(2);
        let mut stale = thumbs("stale", "md", "v1", true);
        stale["timestamp"] = json!(old.to_string());
        let mut alice = thumbs("alice-1", "md", "v1", false);
        alice["subject"] = json!("alice");
        let mut session = thumbs("alice-2", "md", "v1", false);
        session["session"] = json!("alice");
        let bob = thumbs("bob-1", "md", "v1", true);
        assert_eq!(r.post("/v1/feedback", json!([stale, alice, session, bob])).await.0, 207);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, page) = r.get("/v1/feedback?namespace=ns&deployment=md").await;
            let ids: Vec<&str> =
                page["items"].as_array().into_iter().flatten().filter_map(|i| i["id"].as_str()).collect();
            if !ids.contains(&"stale") {
                assert_eq!(ids, ["alice-1", "alice-2", "bob-1"], "{b:?}");
                break;
            }
            assert!(Instant::now() < deadline, "the stale event was never purged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, body) = r.send(r.http.delete(format!("{}/v1/subjects/alice", r.base)).bearer_auth(WRITE)).await;
        assert_eq!((status, body["deleted"].as_i64()), (200, Some(2)), "{body}");
        check_schema("/v1/subjects/{key}", "delete", 200, &body);
        let (status, _) = r.send(r.http.delete(format!("{}/v1/subjects/bob", r.base)).bearer_auth(READ)).await;
        assert_eq!(status, 403, "erasing needs a write token");
        let stats = r.stats("md").await;
        assert_eq!(version(&stats, "v1")["total"], 1);
        r.stop().await;
    }
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let r = Running::start(&Backend::Sqlite).await;
    for path in ["/healthz", "/readyz"] {
        let status = r.http.get(format!("{}{path}", r.base)).send().await.map(|x| x.status().as_u16()).unwrap_or(0);
        assert_eq!(status, 200, "{path}");
    }
    assert_eq!(r.post("/v1/feedback", thumbs("m1", "md", "v1", true)).await.0, 201);
    assert_eq!(r.post("/v1/feedback", thumbs("m1", "md", "v1", true)).await.0, 200);
    let _unauth = r.http.post(format!("{}/v1/feedback", r.base)).send().await;
    let text = r
        .http
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    for needle in [
        "flywheel_collector_ingested_events_total{kind=\"thumbs\"} 1",
        "flywheel_collector_duplicate_events_total 1",
        "flywheel_collector_rejected_total{reason=\"unauthenticated\"} 1",
        "flywheel_collector_commit_duration_seconds_count",
        "flywheel_collector_commit_batch_events_bucket",
        "flywheel_collector_store_bytes",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    r.stop().await;
}

#[tokio::test]
async fn an_unreachable_database_gives_503_and_not_ready_then_recovers() {
    let Some(Backend::Postgres(admin)) = backends().into_iter().find(|b| matches!(b, Backend::Postgres(_))) else {
        return;
    };
    let r = Running::start(&Backend::Postgres(admin.clone())).await;
    assert_eq!(r.post("/v1/feedback", thumbs("before", "md", "v1", true)).await.0, 201);
    let url = r.database_url.clone().unwrap_or_default();
    let name = url.rsplit(['/', '=']).next().unwrap_or_default().split('?').next().unwrap_or_default().to_string();
    let (admin_client, conn) =
        tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(conn);
    // Cut the collector off: refuse new connections to its database and end the open ones.
    admin_client
        .batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, body) = r.post("/v1/feedback", thumbs("during", "md", "v1", true)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "StoreUnavailable");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = r.http.get(format!("{}/readyz", r.base)).send().await.map(|x| x.status().as_u16()).unwrap_or(0);
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "readiness never turned false");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin_client
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = r.post("/v1/feedback", thumbs("after", "md", "v1", true)).await;
        if status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "the collector never recovered: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = r.stats("md").await;
    assert_eq!(version(&stats, "v1")["total"], 2, "before and after; never the refused one");
    r.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Durability: SIGKILL while clients write.

struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _kill = self.child.kill();
        let _wait = self.child.wait();
    }
}

fn spawn_collector(port: u16, data: &std::path::Path, tokens: &std::path::Path, database_url: Option<&str>) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flywheel"));
    cmd.args(["collector", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .arg("--token-file")
        .arg(tokens)
        .env_remove("FLYWHEEL_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    Process { child: cmd.spawn().unwrap_or_else(|e| panic!("{e}")) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill() {
    for b in backends() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("{WRITE}\n")).unwrap_or_else(|e| panic!("{e}"));
        let database_url = match &b {
            Backend::Sqlite => None,
            Backend::Postgres(admin) => Some(fresh_database(admin).await),
        };
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
        let base = format!("http://127.0.0.1:{port}");
        let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let http =
            flywheel::http_client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_else(|e| panic!("{e}"));
        let mut writers = Vec::new();
        for w in 0..6 {
            let (acked, stop, http, base) = (acked.clone(), stop.clone(), http.clone(), base.clone());
            writers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Half the writers send batches of 20, half single events.
                    let ids: Vec<String> =
                        (0..if w % 2 == 0 { 20 } else { 1 }).map(|k| format!("w{w}-{n}-{k}")).collect();
                    let events: Vec<Value> = ids.iter().map(|id| thumbs(id, "md", "v1", true)).collect();
                    let body = if ids.len() == 1 { events[0].clone() } else { Value::Array(events) };
                    // A request is retried with the same ids until it is acknowledged, as a real
                    // client would; the collector must never store one twice.
                    loop {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        let sent = http.post(format!("{base}/v1/feedback")).bearer_auth(WRITE).json(&body).send().await;
                        if let Ok(response) = sent
                            && matches!(response.status().as_u16(), 200 | 201 | 207)
                            && let Ok(answer) = response.json::<Value>().await
                        {
                            let ok = if ids.len() == 1 {
                                true
                            } else {
                                answer["results"]
                                    .as_array()
                                    .is_some_and(|r| r.iter().all(|x| x["status"] == 201 || x["status"] == 200))
                            };
                            if ok {
                                if let Ok(mut a) = acked.lock() {
                                    a.extend(ids.iter().cloned());
                                }
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    n += 1;
                }
            }));
        }
        for round in 0..4 {
            let process = spawn_collector(port, &dir.path().join("data"), &tokens, database_url.as_deref());
            tokio::time::sleep(Duration::from_millis(if round == 3 { 2500 } else { 1500 })).await;
            if round < 3 {
                // SIGKILL: no chance to flush anything.
                drop(process);
                tokio::time::sleep(Duration::from_millis(100)).await;
            } else {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                for w in writers.drain(..) {
                    let _done = w.await;
                }
                let acked: Vec<String> = acked.lock().map(|a| a.clone()).unwrap_or_default();
                assert!(acked.len() > 100, "{b:?}: too few events acknowledged to mean anything: {}", acked.len());
                let mut stored: HashMap<String, usize> = HashMap::new();
                let mut after = 0i64;
                loop {
                    let page: Value = http
                        .get(format!("{base}/v1/feedback?namespace=ns&deployment=md&after={after}&limit=10000"))
                        .bearer_auth(WRITE)
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("{e}"))
                        .json()
                        .await
                        .unwrap_or(Value::Null);
                    let items = page["items"].as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        break;
                    }
                    for item in &items {
                        *stored.entry(item["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
                    }
                    after = page["next"].as_i64().unwrap_or(i64::MAX);
                }
                let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains_key(*id)).collect();
                assert!(
                    missing.is_empty(),
                    "{b:?}: {} acknowledged events lost, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                );
                let twice: BTreeMap<&String, &usize> = stored.iter().filter(|(_, n)| **n > 1).collect();
                assert!(twice.is_empty(), "{b:?}: stored twice: {twice:?}");
                eprintln!("{b:?}: {} acknowledged, {} stored, 3 SIGKILLs", acked.len(), stored.len());
                drop(process);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_429_with_retry_after_and_loses_nothing_acknowledged() {
    // One request may wait for a commit and one event goes per commit: a burst overflows.
    let r = Running::start_with(&Backend::Sqlite, |c| {
        c.queue = 1;
        c.max_batch = 1;
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (http, base) = (r.http.clone(), r.base.clone());
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(format!("{base}/v1/feedback"))
                .bearer_auth(WRITE)
                .json(&thumbs(&format!("burst-{i}"), "md", "v1", true))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, retry_after, body)
        }));
    }
    let (mut created, mut throttled) = (0, 0);
    for t in tasks {
        let (status, retry_after, body) = t.await.unwrap_or_else(|e| panic!("{e}"));
        match status {
            201 => created += 1,
            429 => {
                throttled += 1;
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert_eq!(body["error"]["code"], "Overloaded");
                check_schema("/v1/feedback", "post", 429, &body);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(throttled > 0, "a burst of 200 against a queue of 1 must be throttled");
    let stats = r.stats("md").await;
    assert_eq!(version(&stats, "v1")["total"], created, "exactly the acknowledged events are stored");
    r.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Dataset snapshots across replicas: the files live in the database, not on a data directory.

/// PostgreSQL, or `None` with the reason printed (the test is then skipped, unless
/// `FLYWHEEL_REQUIRE_POSTGRES` asks for PostgreSQL, which `backends` enforces).
fn postgres_or_skip(test: &str) -> Option<Backend> {
    let found = backends().into_iter().find(|b| matches!(b, Backend::Postgres(_)));
    if found.is_none() {
        eprintln!("SKIPPED: {test} needs PostgreSQL (set FLYWHEEL_TEST_DATABASE_URL)");
    }
    found
}

/// Interactions and corrections whose dataset files are larger than a stored chunk (1 MiB), so
/// that serving them takes several chunks. Every prompt is different.
async fn post_large_feedback(r: &Running, n: usize) {
    let mut interactions = Vec::new();
    let mut feedback = Vec::new();
    for i in 0..n {
        let prompt = format!("question {i}: {}", "what is the colour of the sky? ".repeat(1000));
        interactions.push(json!({"id": format!("big{i}"), "namespace": "ns", "deployment": "md", "version": "v1",
            "prompt": [{"role": "user", "content": prompt}], "answer": format!("answer {i}"), "subject": format!("user{}", i % 3)}));
        feedback.push(json!({"id": format!("fix{i}"), "interactionId": format!("big{i}"), "kind": "correction",
            "value": format!("correction {i}: {}", "blue, with some clouds. ".repeat(2000)), "subject": format!("user{}", i % 3)}));
    }
    let (status, body) = r.post("/v1/interactions", Value::Array(interactions)).await;
    assert_eq!((status, body["created"].as_u64()), (207, Some(n as u64)), "{body}");
    let (status, body) = r.post("/v1/feedback", Value::Array(feedback)).await;
    assert_eq!((status, body["created"].as_u64()), (207, Some(n as u64)), "{body}");
}

/// Every file of a snapshot through `r`: the bytes, checked against `SHA256SUMS`, the
/// snapshot's sha256, the manifest, `Content-Length` and `ETag`.
async fn download_checked(r: &Running, manifest: &Value) -> BTreeMap<String, Vec<u8>> {
    use sha2::Digest;
    let id = manifest["id"].as_str().unwrap_or_default();
    let mut out = BTreeMap::new();
    let (status, _, _, sums) = r.file(id, "SHA256SUMS").await;
    assert_eq!(status, 200, "SHA256SUMS of {id}");
    assert_eq!(manifest["sha256"], hex::encode(sha2::Sha256::digest(&sums)), "the snapshot's sha256");
    let sums_text = String::from_utf8(sums.clone()).unwrap_or_default();
    assert_eq!(sums_text.lines().count(), 4, "{sums_text}");
    for line in sums_text.lines() {
        let (digest, name) = line.split_once("  ").unwrap_or_default();
        let (status, length, etag, bytes) = r.file(id, name).await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), digest, "{name}");
        assert_eq!(length, Some(bytes.len() as u64), "{name}: Content-Length");
        assert_eq!(etag, Some(format!("\"{digest}\"")), "{name}: ETag");
        assert_eq!(manifest["files"][name]["bytes"], bytes.len(), "{name}");
        assert_eq!(manifest["files"][name]["sha256"], digest, "{name}");
        out.insert(name.to_string(), bytes);
    }
    out.insert("SHA256SUMS".to_string(), sums);
    let (status, _, _, described) = r.file(id, "manifest.json").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<Value>(&described).unwrap_or(Value::Null), *manifest, "manifest.json");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_built_on_one_replica_is_served_by_another() {
    let Some(pg) = postgres_or_skip("a_snapshot_built_on_one_replica_is_served_by_another") else { return };
    let mut one = Running::start(&pg).await;
    let two = one.replica().await;
    post_large_feedback(&one, 24).await;
    let (status, manifest) = one.post("/v1/datasets", json!({"namespace": "ns", "deployment": "md"})).await;
    assert_eq!(status, 201, "{manifest}");
    check_schema("/v1/datasets", "post", 201, &manifest);
    let id = manifest["id"].as_str().unwrap_or_default().to_string();
    assert!(
        manifest["files"]["sft.jsonl"]["bytes"].as_u64().unwrap_or(0) > 1024 * 1024,
        "sft.jsonl spans several stored chunks: {manifest}"
    );

    // The other replica describes it and serves every file, byte for byte.
    let (status, described) = two.get(&format!("/v1/datasets/{id}")).await;
    assert_eq!(status, 200, "{described}");
    check_schema("/v1/datasets/{id}", "get", 200, &described);
    assert_eq!(described, manifest);
    let from_two = download_checked(&two, &manifest).await;
    let from_one = download_checked(&one, &manifest).await;
    assert_eq!(from_one, from_two);
    // Neither replica keeps a copy on its data directory.
    assert!(!one.data.join("datasets").exists() && !two.data.join("datasets").exists());

    // With the replica that built it gone, the other still serves it.
    one.halt().await;
    assert_eq!(download_checked(&two, &manifest).await, from_two);
    two.stop().await;
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_snapshot_built_at_once_on_two_replicas_is_one_snapshot() {
    for b in backends() {
        let one = Running::start(&b).await;
        // SQLite is one replica: the concurrent requests go to it; PostgreSQL: to two replicas.
        let two = match b {
            Backend::Postgres(_) => Some(one.replica().await),
            Backend::Sqlite => None,
        };
        post_large_feedback(&one, 8).await;
        let request = json!({"namespace": "ns", "deployment": "md", "recipe": {"heldOutFraction": 0.0}});
        let replicas = [&one, two.as_ref().unwrap_or(&one)];
        let answers =
            futures::future::join_all((0..6).map(|k| replicas[k % 2].post("/v1/datasets", request.clone()))).await;
        let seen: Vec<(u16, &Value)> = answers.iter().map(|(status, body)| (*status, &body["createdAt"])).collect();
        let created = answers.iter().filter(|(status, _)| *status == 201).count();
        assert_eq!(created, 1, "{b:?}: one request builds it, the others get it (status, createdAt): {seen:?}");
        for (status, body) in &answers {
            assert!(*status == 200 || *status == 201, "{b:?}: {status} {body}");
            check_schema("/v1/datasets", "post", *status, body);
            assert_eq!(*body, answers[0].1, "{b:?}: every request answers the same description");
        }
        let manifest = &answers[0].1;
        assert_eq!(one.sql("SELECT COUNT(*) FROM datasets").await, 1, "{b:?}");
        assert_eq!(one.sql("SELECT COUNT(*) FROM dataset_files").await, 5, "{b:?}");
        let files = download_checked(two.as_ref().unwrap_or(&one), manifest).await;
        let chunks: usize = files.values().map(|f| f.len().div_ceil(1024 * 1024)).sum();
        assert_eq!(one.sql("SELECT COUNT(*) FROM dataset_chunks").await, chunks as i64, "{b:?}: no chunk twice");
        if let Some(two) = two {
            two.stop().await;
        }
        one.stop().await;
    }
}

#[tokio::test]
async fn snapshots_are_kept_through_erasure_and_retention() {
    for b in backends() {
        let r = Running::start(&b).await;
        post_large_feedback(&r, 6).await;
        let (status, manifest) = r.post("/v1/datasets", json!({"namespace": "ns", "deployment": "md"})).await;
        assert_eq!(status, 201, "{b:?} {manifest}");
        let before = download_checked(&r, &manifest).await;
        // Erase a user whose rows are in the snapshot, then purge every event as retention would.
        let (status, body) = r.send(r.http.delete(format!("{}/v1/subjects/user0", r.base)).bearer_auth(WRITE)).await;
        assert_eq!((status, body["deleted"].as_i64()), (200, Some(4)), "{b:?} {body}");
        let store = flywheel::collector::store::Store::open(&r.data, r.database_url.as_deref())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.purge(i64::MAX).await.unwrap_or_else(|e| panic!("{e}")), 8, "{b:?}");
        // The snapshot is immutable: described and served as it was built.
        let id = manifest["id"].as_str().unwrap_or_default();
        let (status, described) = r.get(&format!("/v1/datasets/{id}")).await;
        assert_eq!((status, &described), (200, &manifest), "{b:?}");
        assert_eq!(download_checked(&r, &manifest).await, before, "{b:?}");
        r.stop().await;
    }
}

/// A snapshot folder as collectors before the database store wrote it.
fn write_old_snapshot(root: &std::path::Path, id: &str, sft: &str) -> Value {
    use sha2::Digest;
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let files = [("dpo.heldout.jsonl", ""), ("dpo.jsonl", ""), ("sft.heldout.jsonl", ""), ("sft.jsonl", sft)];
    let mut sums = String::new();
    let mut listed = serde_json::Map::new();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{e}"));
        let digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        sums.push_str(&format!("{digest}  {name}\n"));
        listed.insert(name.into(), json!({"sha256": digest, "rows": text.lines().count(), "bytes": text.len()}));
    }
    std::fs::write(dir.join("SHA256SUMS"), &sums).unwrap_or_else(|e| panic!("{e}"));
    let manifest = json!({
        "id": id, "namespace": "ns", "deployment": "md", "formats": ["SFT"],
        "counts": {"sft": sft.lines().count(), "dpo": 0, "heldOut": 0},
        "sha256": hex::encode(sha2::Sha256::digest(sums.as_bytes())), "files": listed,
        "uri": format!("file://{}", dir.display()), "downloadPath": format!("/v1/datasets/{id}/files"),
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    manifest
}

#[tokio::test]
async fn snapshots_of_older_collectors_move_into_the_store_or_are_rebuilt() {
    let row = r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"source":"correction","version":"v1"}"#;
    for b in backends() {
        // A data directory an older collector left: a whole snapshot, one whose file does not
        // match its digest, and the temporary folder of an interrupted write.
        let (good, bad) = ("ds-0123456789abcdef0123", "ds-fedcba9876543210fedc");
        let mut old = Value::Null;
        let r = Running::start_with(&b, |c| {
            let root = c.data_dir.join("datasets");
            old = write_old_snapshot(&root, good, &format!("{row}\n"));
            write_old_snapshot(&root, bad, &format!("{row}\n"));
            std::fs::write(root.join(bad).join("sft.jsonl"), "tampered\n").unwrap_or_else(|e| panic!("{e}"));
            std::fs::create_dir_all(root.join(".ds-0123456789abcdef0123.tmp")).unwrap_or_else(|e| panic!("{e}"));
        })
        .await;
        let root = r.data.join("datasets");
        let (status, described) = r.get(&format!("/v1/datasets/{good}")).await;
        assert_eq!((status, &described), (200, &old), "{b:?}");
        let files = download_checked(&r, &old).await;
        assert_eq!(files.get("sft.jsonl").map(Vec::as_slice), Some(format!("{row}\n").as_bytes()));
        assert!(!root.join(good).exists(), "{b:?}: a moved snapshot's folder is removed");
        assert!(!root.join(".ds-0123456789abcdef0123.tmp").exists(), "{b:?}");
        assert!(root.join(bad).join("manifest.json").exists(), "{b:?}: a folder that does not check out stays");
        assert_eq!(r.get(&format!("/v1/datasets/{bad}")).await.0, 404, "{b:?}");

        // A snapshot recorded without its files (an older replica built it and kept the files):
        // its files answer 404 naming the problem, and building it again stores them.
        post_large_feedback(&r, 16).await;
        let request = json!({"namespace": "ns", "deployment": "md", "recipe": {"heldOutFraction": 0.0}});
        let (status, manifest) = r.post("/v1/datasets", request.clone()).await;
        assert_eq!(status, 201, "{b:?} {manifest}");
        let id = manifest["id"].as_str().unwrap_or_default().to_string();
        let built = download_checked(&r, &manifest).await;
        // A chunk lost from the store: the body ends before its Content-Length, so no client
        // takes a short file for a whole one.
        let removed = r
            .sql(&format!("DELETE FROM dataset_chunks WHERE dataset_id = '{id}' AND name = 'sft.jsonl' AND part = 1"))
            .await;
        assert_eq!(removed, 1, "{b:?}: sft.jsonl spans two chunks");
        let response = r
            .http
            .get(format!("{}/v1/datasets/{id}/files/sft.jsonl", r.base))
            .bearer_auth(READ)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), 200);
        assert!(response.bytes().await.is_err(), "{b:?}: a body cut short is an error");
        assert_eq!(r.sql(&format!("DELETE FROM dataset_files WHERE dataset_id = '{id}'")).await, 5);
        r.sql(&format!("DELETE FROM dataset_chunks WHERE dataset_id = '{id}'")).await;
        let (status, body) = r.get(&format!("/v1/datasets/{id}/files/sft.jsonl")).await;
        assert_eq!(status, 404, "{b:?} {body}");
        check_schema("/v1/datasets/{id}/files/{name}", "get", 404, &body);
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("no stored files") && message.contains("build the snapshot again"), "{message}");
        let (status, again) = r.post("/v1/datasets", request).await;
        assert_eq!((status, &again), (200, &manifest), "{b:?}: the stored description, its files restored");
        assert_eq!(download_checked(&r, &manifest).await, built, "{b:?}");
        r.stop().await;
    }
}
