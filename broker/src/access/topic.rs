//! MQTT topic and topic-filter matching, the way both brokers read an ACL entry.

/// Whether `topic` (a concrete topic name) matches `filter` (which may hold `+` and `#`).
///
/// As in MQTT (and Mosquitto's ACL check), `a/#` also matches `a`, and a topic starting with
/// `$` is not matched by a filter whose first level is a wildcard.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic that `filter` can match is also matched by `grant`: the subscription
/// `filter` asks for nothing beyond what `grant` allows.
pub fn filter_covered_by(grant: &str, filter: &str) -> bool {
    if filter.starts_with('$') && (grant.starts_with('+') || grant.starts_with('#')) {
        return false;
    }
    let mut grant_levels = grant.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (grant_levels.next(), filter_levels.next()) {
            (Some("#"), _) => return true,
            // `+` in the grant covers one level of anything except a multi-level wildcard.
            (Some("+"), Some(f)) if f != "#" => {}
            // A literal grant level covers only the same literal: `+` or `#` asks for more.
            (Some(g), Some(f)) if g == f && g != "+" => {}
            (None, None) => return true,
            // Anything else asks for more than the grant: a wildcard where the grant has a
            // literal, `#` where it has `+`, or more or fewer levels.
            _ => return false,
        }
    }
}

/// The filter a shared subscription (`$share/{group}/{filter}`) is really for; other filters
/// unchanged. `None` for a malformed share (no group or no filter).
pub fn unshare(filter: &str) -> Option<&str> {
    match filter.strip_prefix("$share/") {
        Some(rest) => {
            let (group, inner) = rest.split_once('/')?;
            (!group.is_empty() && !inner.is_empty()).then_some(inner)
        }
        None => Some(filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_filters_like_mqtt_says() {
        assert!(topic_matches("spBv1.0/a/NDATA/g/#", "spBv1.0/a/NDATA/g"));
        assert!(topic_matches("spBv1.0/a/NDATA/g/#", "spBv1.0/a/NDATA/g/m"));
        assert!(topic_matches("spBv1.0/STATE/+", "spBv1.0/STATE/hub"));
        assert!(!topic_matches("spBv1.0/STATE/+", "spBv1.0/STATE/hub/x"));
        assert!(!topic_matches("spBv1.0/a/NDATA/g/#", "spBv1.0/b/NDATA/g"));
        assert!(!topic_matches("#", "$SYS/uptime"));
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }

    #[test]
    fn a_filter_is_covered_only_when_it_asks_for_nothing_more() {
        assert!(filter_covered_by("spBv1.0/#", "spBv1.0/#"));
        assert!(filter_covered_by("spBv1.0/#", "spBv1.0/+/NDATA/#"));
        assert!(filter_covered_by("spBv1.0/STATE/+", "spBv1.0/STATE/+"));
        assert!(filter_covered_by("spBv1.0/STATE/+", "spBv1.0/STATE/hub"));
        assert!(!filter_covered_by("spBv1.0/STATE/+", "spBv1.0/STATE/#"));
        assert!(!filter_covered_by("demolab/a/#", "demolab/#"));
        assert!(!filter_covered_by("demolab/a/#", "demolab/+/m"));
        assert!(!filter_covered_by("a/b", "a/+"));
        assert!(!filter_covered_by("a", "a/#"));
        assert!(!filter_covered_by("#", "$SYS/#"));
    }

    #[test]
    fn shared_subscriptions_are_judged_by_their_inner_filter() {
        assert_eq!(unshare("$share/hub/spBv1.0/#"), Some("spBv1.0/#"));
        assert_eq!(unshare("spBv1.0/#"), Some("spBv1.0/#"));
        assert_eq!(unshare("$share/hub"), None);
        assert_eq!(unshare("$share//x"), None);
    }
}
