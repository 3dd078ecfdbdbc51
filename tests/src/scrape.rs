//! Reading the metrics port: a Prometheus text endpoint into series that tests and reports can
//! query, and any other path (`/healthz`, `/readyz`) as status and text.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub series: Vec<Series>,
}

impl Snapshot {
    /// Parses Prometheus text exposition format (the subset tapwire emits).
    pub fn parse(text: &str) -> anyhow::Result<Snapshot> {
        let mut series = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (key, value) = line.rsplit_once(' ').context("sample without value")?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("bad value in {line:?}"))?;
            let (name, labels) = match key.split_once('{') {
                None => (key, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').context("unterminated labels")?;
                    let labels = body
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (label, value) = pair.split_once("=\"").context("bad label")?;
                            Ok((label.to_owned(), value.trim_end_matches('"').to_owned()))
                        })
                        .collect::<anyhow::Result<_>>()?;
                    (name, labels)
                }
            };
            series.push(Series {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Ok(Snapshot { series })
    }

    /// Sum of every sample of `name` whose labels include all of `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> u64 {
        self.series
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum::<f64>() as u64
    }

    /// Non-zero samples of `name` matching `filter`, keyed by the value of `label`.
    pub fn by_label(
        &self,
        name: &str,
        label: &str,
        filter: &[(&str, &str)],
    ) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self
            .series
            .iter()
            .filter(|s| s.name == name && s.value > 0.0)
        {
            if filter
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
                && let Some(key) = s.labels.get(label)
            {
                *out.entry(key.clone()).or_insert(0) += s.value as u64;
            }
        }
        out
    }
}

/// GETs `http://addr/metrics` and parses it.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Snapshot> {
    let (status, body) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    Snapshot::parse(&body)
}

/// GETs `http://addr{path}`: the status code and the body (as text).
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach {addr}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_samples_are_summed_by_filter() {
        let text = "# HELP x\nreq_total{target=\"a\",status=\"2xx\"} 3\nreq_total{target=\"a\",status=\"5xx\"} 1\nreq_total{target=\"b\",status=\"2xx\"} 7\nplain 2\n";
        let snapshot = Snapshot::parse(text).unwrap();
        assert_eq!(snapshot.sum("req_total", &[("target", "a")]), 4);
        assert_eq!(snapshot.sum("req_total", &[]), 11);
        assert_eq!(snapshot.sum("plain", &[]), 2);
        let by_status = snapshot.by_label("req_total", "status", &[("target", "a")]);
        assert_eq!(by_status.get("5xx"), Some(&1));
    }
}
