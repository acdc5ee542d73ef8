//! Locality tiers: how near an endpoint runs to this sidecar.

use std::fmt;

use bulkhead_proto::model::Locality;

/// How near an endpoint is, nearest first: the balancer uses the nearest tier
/// that has a healthy endpoint. `Ord` follows that preference
/// (`Node < Zone < Region < Any`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum LocalityTier {
    /// Same node as this sidecar.
    Node,
    /// Same zone (and, when both sides name one, the same region).
    Zone,
    /// Same region.
    Region,
    /// Anywhere else, including endpoints whose locality is unknown.
    Any,
}

impl LocalityTier {
    /// Every tier, nearest first.
    pub(crate) const ALL: [LocalityTier; 4] = [Self::Node, Self::Zone, Self::Region, Self::Any];

    /// The tier of an endpoint at `remote`, seen from a sidecar at `local`.
    ///
    /// An empty field means "unknown" and never matches, so two endpoints that
    /// both lack a zone are not thereby in the same zone. Zone names are only
    /// unique within a region, so a zone match also needs the regions to agree
    /// when both are known.
    pub(crate) fn between(local: &Locality, remote: &Locality) -> LocalityTier {
        let same = |a: &str, b: &str| !a.is_empty() && a == b;
        let regions_agree =
            local.region.is_empty() || remote.region.is_empty() || local.region == remote.region;
        if same(&local.node, &remote.node) {
            LocalityTier::Node
        } else if same(&local.zone, &remote.zone) && regions_agree {
            LocalityTier::Zone
        } else if same(&local.region, &remote.region) {
            LocalityTier::Region
        } else {
            LocalityTier::Any
        }
    }

    /// The `tier` label value of `bulkhead_lb_picks_total`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LocalityTier::Node => "node",
            LocalityTier::Zone => "zone",
            LocalityTier::Region => "region",
            LocalityTier::Any => "any",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for LocalityTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(node: &str, zone: &str, region: &str) -> Locality {
        Locality {
            node: node.into(),
            zone: zone.into(),
            region: region.into(),
        }
    }

    #[test]
    fn tiers_from_nearest_to_farthest() {
        let local = at("n1", "z1", "r1");
        let cases = [
            (at("n1", "z1", "r1"), LocalityTier::Node),
            (at("n2", "z1", "r1"), LocalityTier::Zone),
            (at("n2", "z1", ""), LocalityTier::Zone),
            (at("n2", "z2", "r1"), LocalityTier::Region),
            (at("n2", "z1", "r2"), LocalityTier::Any),
            (at("n2", "z2", "r2"), LocalityTier::Any),
            (Locality::default(), LocalityTier::Any),
        ];
        for (remote, tier) in cases {
            assert_eq!(LocalityTier::between(&local, &remote), tier, "{remote:?}");
        }
    }

    #[test]
    fn unknown_fields_never_match() {
        let nowhere = Locality::default();
        assert_eq!(LocalityTier::between(&nowhere, &nowhere), LocalityTier::Any);
        let local = at("", "z1", "");
        assert_eq!(
            LocalityTier::between(&local, &at("", "z1", "r9")),
            LocalityTier::Zone
        );
    }

    #[test]
    fn order_and_labels() {
        assert!(LocalityTier::Node < LocalityTier::Zone);
        assert!(LocalityTier::Region < LocalityTier::Any);
        let labels: Vec<_> = LocalityTier::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(labels, ["node", "zone", "region", "any"]);
        for (i, tier) in LocalityTier::ALL.into_iter().enumerate() {
            assert_eq!(tier.index(), i);
        }
    }
}
