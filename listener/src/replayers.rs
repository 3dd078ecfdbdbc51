//! Which replayers there are: the `--replayer` URLs, a name that resolves to several addresses
//! (a Kubernetes headless Service) standing for one replayer per address, turned into gRPC
//! endpoints with the link's timeouts, windows and TLS. Names are resolved again periodically,
//! so replayers that come and go (pods rescheduled) are followed.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use tonic::transport::{ClientTlsConfig, Endpoint, Uri};

/// The configured replayers and how to reach them.
#[derive(Debug, Clone)]
pub struct ReplayerSet {
    urls: Vec<Uri>,
    tls: Option<ClientTlsConfig>,
}

impl ReplayerSet {
    /// `tls` must be set exactly when the URLs are `https://` (checked by the caller).
    pub fn new(urls: Vec<Uri>, tls: Option<ClientTlsConfig>) -> Self {
        ReplayerSet { urls, tls }
    }

    /// Whether any URL is a name, whose addresses may change.
    pub fn has_names(&self) -> bool {
        self.urls.iter().any(|url| ip_of(url).is_none())
    }

    /// Per configured URL, one endpoint per replayer address, in a stable order. A name that
    /// does not resolve now keeps what `previous` (an earlier result, same order) found for it,
    /// or else stays a name, resolved again at each connection attempt.
    pub fn resolve(
        &self,
        previous: &[Vec<Endpoint>],
    ) -> Result<Vec<Vec<Endpoint>>, tonic::transport::Error> {
        let mut resolved = Vec::new();
        for (index, url) in self.urls.iter().enumerate() {
            let earlier = previous.get(index).filter(|earlier| !earlier.is_empty());
            let endpoints = match (resolve(url), earlier) {
                (Some(addresses), _) => addresses
                    .into_iter()
                    .map(|address| self.endpoint(url, address))
                    .collect::<Result<_, _>>()?,
                (None, Some(earlier)) => earlier.clone(),
                (None, None) => vec![self.endpoint(url, url.clone())?],
            };
            resolved.push(endpoints);
        }
        Ok(resolved)
    }

    fn endpoint(&self, url: &Uri, address: Uri) -> Result<Endpoint, tonic::transport::Error> {
        let mut endpoint = Endpoint::from(address)
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            // Detects a replayer host that vanished without closing the connection, within
            // interval + timeout.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .initial_stream_window_size(tapwire_shared::link::WINDOW_BYTES)
            .initial_connection_window_size(tapwire_shared::link::WINDOW_BYTES);
        if let Some(tls) = &self.tls {
            // The certificate names the host, whichever of its addresses is dialled.
            let host = url.host().unwrap_or_default().trim_matches(['[', ']']);
            endpoint = endpoint.tls_config(tls.clone().domain_name(host))?;
        }
        Ok(endpoint)
    }
}

fn ip_of(url: &Uri) -> Option<IpAddr> {
    url.host()?.trim_matches(['[', ']']).parse().ok()
}

fn port_of(url: &Uri) -> u16 {
    url.port_u16()
        .unwrap_or(if url.scheme_str() == Some("https") {
            443
        } else {
            80
        })
}

/// The addresses a URL names: itself for an IP or a name with one address, one URL per
/// address for a name with several; `None` when the name does not resolve.
fn resolve(url: &Uri) -> Option<Vec<Uri>> {
    if ip_of(url).is_some() {
        return Some(vec![url.clone()]);
    }
    let host = url.host()?;
    let mut addresses: Vec<SocketAddr> = (host, port_of(url)).to_socket_addrs().ok()?.collect();
    addresses.sort();
    addresses.dedup();
    if addresses.len() < 2 {
        return Some(vec![url.clone()]);
    }
    let scheme = url.scheme_str().unwrap_or("http");
    Some(
        addresses
            .into_iter()
            .filter_map(|address| format!("{scheme}://{address}").parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_url_is_one_replayer_and_a_name_keeps_its_host_for_tls() {
        let set = ReplayerSet::new(
            vec![
                "http://127.0.0.1:7070".parse().unwrap(),
                "http://localhost:7071".parse().unwrap(),
            ],
            None,
        );
        let resolved = set.resolve(&[]).unwrap();
        let uris: Vec<String> = resolved
            .concat()
            .iter()
            .map(|e| e.uri().to_string())
            .collect();
        assert_eq!(uris[0], "http://127.0.0.1:7070/");
        // localhost may resolve to 127.0.0.1 and ::1: one replayer per address then.
        assert!(uris.len() >= 2, "{uris:?}");
        assert!(uris[1..].iter().all(|u| u.ends_with(":7071/")), "{uris:?}");
        if uris.len() > 2 {
            assert!(
                uris[1..].iter().all(|u| !u.contains("localhost")),
                "{uris:?}"
            );
        }
        assert!(set.has_names());
    }

    #[test]
    fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        let url: Uri = "http://replayers.invalid:7070".parse().unwrap();
        let set = ReplayerSet::new(vec![url], None);
        let earlier = vec![vec![Endpoint::from_static("http://10.0.0.7:7070")]];
        let resolved = set.resolve(&earlier).unwrap();
        assert_eq!(resolved[0].len(), 1);
        assert_eq!(resolved[0][0].uri().to_string(), "http://10.0.0.7:7070/");
        // Never resolved: kept as a name, tried at each connection attempt.
        let resolved = set.resolve(&[]).unwrap();
        assert_eq!(resolved[0][0].uri().host(), Some("replayers.invalid"));
    }
}
