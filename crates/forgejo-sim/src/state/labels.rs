//! The label rules shared by the jobs endpoint and the runner matcher (contract §1.4, §3.1).

use crate::version::ForgejoVersion;

/// The `labels` query parameter of the jobs endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelsQuery {
    /// No `labels` key in the query at all.
    Absent,
    /// The first value, trimmed as a whole and split on `,` with the pieces kept untrimmed.
    Present(Vec<String>),
}

/// Parses a raw query string the way Go's `url.ParseQuery` + `FormString("labels")` do:
/// pairs split on `&`, `+` is a space, `%XX` escapes decoded, pairs with bad escapes dropped,
/// the first `labels` value wins.
pub fn parse_labels_query(raw_query: Option<&str>) -> LabelsQuery {
    let Some(raw) = raw_query else {
        return LabelsQuery::Absent;
    };
    for pair in raw.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(key), Some(value)) = (query_unescape(key), query_unescape(value)) else {
            continue;
        };
        if key == "labels" {
            return LabelsQuery::Present(split_labels(&value));
        }
    }
    LabelsQuery::Absent
}

/// `strings.Split(strings.TrimSpace(v), ",")`: never empty, pieces untrimmed.
pub fn split_labels(value: &str) -> Vec<String> {
    value.trim().split(',').map(str::to_owned).collect()
}

/// Go's `url.QueryUnescape`; `None` for an invalid escape.
pub fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16))?;
                let lo = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16))?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Forgejo's `ItRunsOn`: every `runs_on` label is among `labels` (exact, case-sensitive);
/// false when either side is empty.
pub fn it_runs_on(labels: &[String], runs_on: &[String]) -> bool {
    !labels.is_empty() && !runs_on.is_empty() && runs_on.iter().all(|l| labels.contains(l))
}

/// Whether the jobs endpoint lists a job with these `runs_on` labels (contract §1.4).
pub fn listing_matches(version: ForgejoVersion, query: &LabelsQuery, runs_on: &[String]) -> bool {
    match query {
        LabelsQuery::Absent if version.absent_labels_mean_all() => true,
        // Forgejo 13 splits the empty string: `[""]`.
        LabelsQuery::Absent => it_runs_on(&[String::new()], runs_on),
        LabelsQuery::Present(labels) => {
            let empty_first = labels.first().is_some_and(|l| l.is_empty());
            (version.absent_labels_mean_all() && empty_first && runs_on.is_empty())
                || it_runs_on(labels, runs_on)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pieces_are_not_trimmed_but_the_whole_is() {
        assert_eq!(
            parse_labels_query(Some("labels=+a,+b+")),
            LabelsQuery::Present(v(&["a", " b"]))
        );
        assert_eq!(
            parse_labels_query(Some("labels=a%2Cb")),
            LabelsQuery::Present(v(&["a", "b"]))
        );
        assert_eq!(parse_labels_query(Some("x=1")), LabelsQuery::Absent);
        assert_eq!(
            parse_labels_query(Some("labels")),
            LabelsQuery::Present(v(&[""]))
        );
        assert_eq!(
            parse_labels_query(Some("labels=%zz&labels=ok")),
            LabelsQuery::Present(v(&["ok"]))
        );
    }

    #[test]
    fn version_rules() {
        let runs_on = v(&["a", "b"]);
        assert!(!listing_matches(
            ForgejoVersion::V13,
            &LabelsQuery::Absent,
            &runs_on
        ));
        assert!(listing_matches(
            ForgejoVersion::V14,
            &LabelsQuery::Absent,
            &runs_on
        ));
        let only_a = LabelsQuery::Present(v(&["a"]));
        assert!(!listing_matches(ForgejoVersion::V15, &only_a, &runs_on));
        let superset = LabelsQuery::Present(v(&["b", "c", "a"]));
        assert!(listing_matches(ForgejoVersion::V13, &superset, &runs_on));
        let empty = LabelsQuery::Present(v(&[""]));
        assert!(listing_matches(ForgejoVersion::V14, &empty, &[]));
        assert!(!listing_matches(ForgejoVersion::V13, &empty, &[]));
    }
}
