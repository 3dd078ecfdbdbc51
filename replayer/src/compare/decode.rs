//! STUB (replaced by the helper's)
use bytes::Bytes;
pub struct DecodedResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
    pub content_type: Option<String>,
}
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed")]
    Malformed,
}
impl DecodeError {
    pub fn reason(&self) -> &'static str {
        "malformed"
    }
}
pub fn decode(
    raw: &[u8],
    answers_head: bool,
    _max_body: usize,
) -> Result<DecodedResponse, DecodeError> {
    let head = tapwire_shared::http1::parse_response_head(raw, answers_head)
        .map_err(|_| DecodeError::Malformed)?
        .ok_or(DecodeError::Malformed)?;
    let text = String::from_utf8_lossy(&raw[..head.len]);
    let headers = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.trim().as_bytes().to_vec()))
        .collect();
    Ok(DecodedResponse {
        status: head.status,
        headers,
        body: Bytes::copy_from_slice(&raw[head.len..]),
        content_type: None,
    })
}
