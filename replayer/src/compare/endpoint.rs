//! Which endpoint a request is: its method and its path with the parts that vary per request
//! collapsed (`GET /users/{n}/orders/{uuid}`), so that differences are counted per endpoint and
//! the number of endpoints stays small. Numeric and UUID segments are collapsed always; more
//! patterns (a regex for a whole segment, and its placeholder) can be configured.

use regex::Regex;

/// Names endpoints: the built-in collapses, then the configured segment patterns in order.
#[derive(Debug, Clone, Default)]
pub struct EndpointNames {
    /// A whole-segment regex (anchored when compiled) and what replaces a segment it matches.
    segments: Vec<(Regex, String)>,
}

impl EndpointNames {
    /// With extra `(regex, placeholder)` segment patterns; a regex is matched against whole
    /// segments.
    pub fn new(patterns: &[(String, String)]) -> Result<EndpointNames, regex::Error> {
        let segments = patterns
            .iter()
            .map(|(pattern, placeholder)| {
                Ok((
                    Regex::new(&format!("^(?:{pattern})$"))?,
                    placeholder.clone(),
                ))
            })
            .collect::<Result<_, regex::Error>>()?;
        Ok(EndpointNames { segments })
    }

    /// `METHOD /normalised/path` for a request line's method and target (query dropped).
    pub fn name(&self, method: &str, path_and_query: &str) -> String {
        let path = path_and_query.split(['?', '#']).next().unwrap_or_default();
        let mut name = String::with_capacity(method.len() + 1 + path.len());
        name.push_str(method);
        name.push(' ');
        if path.is_empty() {
            name.push('/');
            return name;
        }
        for (index, segment) in path.split('/').enumerate() {
            if index > 0 {
                name.push('/');
            }
            name.push_str(self.segment(segment));
        }
        name
    }

    fn segment<'a>(&'a self, segment: &'a str) -> &'a str {
        if !segment.is_empty() && segment.bytes().all(|byte| byte.is_ascii_digit()) {
            return "{n}";
        }
        if is_uuid(segment) {
            return "{uuid}";
        }
        self.segments
            .iter()
            .find(|(regex, _)| regex.is_match(segment))
            .map_or(segment, |(_, placeholder)| placeholder.as_str())
    }
}

/// `8-4-4-4-12` hexadecimal digits, any case.
fn is_uuid(segment: &str) -> bool {
    let groups: Vec<&str> = segment.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_uuids_collapse_and_the_query_is_dropped() {
        let names = EndpointNames::default();
        assert_eq!(
            names.name(
                "GET",
                "/users/42/orders/9F1C2B3A-1111-4a2b-8c3d-0123456789ab?page=2"
            ),
            "GET /users/{n}/orders/{uuid}"
        );
        assert_eq!(names.name("POST", "/v2/items"), "POST /v2/items");
        assert_eq!(names.name("GET", "/"), "GET /");
        assert_eq!(names.name("GET", "?q=1"), "GET /");
        assert_eq!(names.name("GET", "/a//b/"), "GET /a//b/");
    }

    #[test]
    fn configured_patterns_collapse_whole_segments_only() {
        let names = EndpointNames::new(&[("[a-z]{2}-[A-Z]{2}".into(), "{locale}".into())]).unwrap();
        assert_eq!(names.name("GET", "/en-US/home"), "GET /{locale}/home");
        assert_eq!(names.name("GET", "/xen-USx/home"), "GET /xen-USx/home");
        assert!(EndpointNames::new(&[("(".into(), "{x}".into())]).is_err());
    }
}
