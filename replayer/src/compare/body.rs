//! STUB
use super::decode::DecodedResponse;
use super::json::Difference;
pub enum Body {
    Json(serde_json::Value),
    Text(String),
    Binary { len: usize, hash: u64 },
}
pub fn classify(r: &DecodedResponse) -> Body {
    match serde_json::from_slice(&r.body) {
        Ok(v) => Body::Json(v),
        Err(_) => Body::Text(String::from_utf8_lossy(&r.body).into_owned()),
    }
}
#[derive(Debug, thiserror::Error)]
#[error("bad")]
pub struct PatternError;
pub struct IgnoredPaths(Vec<String>);
impl IgnoredPaths {
    pub fn new(p: &[String]) -> Result<IgnoredPaths, PatternError> {
        Ok(IgnoredPaths(p.to_vec()))
    }
    pub fn matches(&self, path: &str) -> bool {
        self.0.iter().any(|p| p == path)
    }
}
pub fn differences(e: &Body, a: &Body, _i: &IgnoredPaths, limit: usize) -> Vec<Difference> {
    match (e, a) {
        (Body::Json(e), Body::Json(a)) => super::json::differences(e, a, limit),
        _ => vec![],
    }
}
pub fn render(b: &Body, _max: usize) -> (String, bool) {
    match b {
        Body::Json(v) => (v.to_string(), false),
        Body::Text(t) => (t.clone(), false),
        Body::Binary { len, .. } => (format!("{len} bytes"), false),
    }
}
