//! The resources this fake serves and where they live in the URL space.

/// One served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Namespace,
    Pod,
    Secret,
    Lease,
}

impl Resource {
    pub const ALL: [Resource; 4] = [
        Resource::Namespace,
        Resource::Pod,
        Resource::Secret,
        Resource::Lease,
    ];

    /// API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Resource::Lease => "coordination.k8s.io",
            _ => "",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Lease => "coordination.k8s.io/v1",
            _ => "v1",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Namespace => "namespaces",
            Resource::Pod => "pods",
            Resource::Secret => "secrets",
            Resource::Lease => "leases",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Namespace => "Namespace",
            Resource::Pod => "Pod",
            Resource::Secret => "Secret",
            Resource::Lease => "Lease",
        }
    }

    pub fn list_kind(self) -> String {
        format!("{}List", self.kind())
    }

    pub fn namespaced(self) -> bool {
        self != Resource::Namespace
    }

    /// How messages name the resource: `pods`, `leases.coordination.k8s.io`.
    pub fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    /// Whether `.status` is a subresource (ignored by updates of the main resource).
    pub fn has_status(self) -> bool {
        matches!(self, Resource::Pod | Resource::Namespace)
    }

    /// The resource an ownerReference (`apiVersion`, `kind`) points at.
    pub fn from_kind(api_version: &str, kind: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.api_version() == api_version && r.kind() == kind)
    }

    fn from_path(group: &str, version: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.group() == group && version == "v1" && r.plural() == plural)
    }
}

/// A parsed API path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub resource: Resource,
    /// `None`: every namespace (list/watch only) or a cluster-scoped resource.
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `log`, `status`.
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/GROUP/v1/...`. `None` for a path the fake does not serve.
pub fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        // `namespaces/NAME` alone is the namespace object itself.
        ["namespaces", ns, plural, tail @ ..] => (Some(ns.to_string()), {
            let mut v = vec![*plural];
            v.extend_from_slice(tail);
            v
        }),
        other => (None, other.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    let resource = Resource::from_path(group, version, plural)?;
    if !resource.namespaced() && namespace.is_some() {
        return None;
    }
    if name.as_deref().is_some_and(str::is_empty) {
        return None;
    }
    Some(Target {
        resource,
        namespace,
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_path("/api/v1/namespaces/ci/pods/p1").unwrap();
        assert_eq!(t.resource, Resource::Pod);
        assert_eq!(t.namespace.as_deref(), Some("ci"));
        assert_eq!(t.name.as_deref(), Some("p1"));
        let t = parse_path("/api/v1/namespaces/ci/pods/p1/log").unwrap();
        assert_eq!(t.subresource.as_deref(), Some("log"));
        let t = parse_path("/api/v1/pods").unwrap();
        assert_eq!((t.resource, t.namespace), (Resource::Pod, None));
        let t = parse_path("/api/v1/namespaces/ci").unwrap();
        assert_eq!(t.resource, Resource::Namespace);
        assert_eq!(t.name.as_deref(), Some("ci"));
        let t = parse_path("/apis/coordination.k8s.io/v1/namespaces/ci/leases/l").unwrap();
        assert_eq!(t.resource, Resource::Lease);
        assert!(parse_path("/apis/coordination.k8s.io/v2/namespaces/ci/leases").is_none());
        assert!(parse_path("/api/v1/namespaces/ci/configmaps").is_none());
        assert!(parse_path("/healthz").is_none());
    }
}
