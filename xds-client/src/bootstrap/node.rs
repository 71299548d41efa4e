//! `node`: who this client is, as sent in the first request of every ADS stream.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf::{
    ListValue, NullValue, Struct, Value as ProtoValue, value::Kind,
};
use serde_json::{Map, Value};

use super::error::BootstrapError;
use super::json::{as_object, child, get, opt_str, record_unknown, wrong_type};

/// The `user_agent_name` meshwork sends.
const USER_AGENT_NAME: &str = "meshwork";

/// The `user_agent_version` meshwork sends: this crate's version.
const USER_AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `client_features` meshwork sends (Envoy's list of well-known client features).
///
/// - `xds.config.resource-in-sotw`: resources in a state-of-the-world response may be
///   wrapped in `envoy.service.discovery.v3.Resource`; the resource decoder unwraps them.
///
/// Deliberately absent: `envoy.lb.does_not_support_overprovisioning` (meshwork honours the
/// overprovisioning factor) and `envoy.lrs.supports_send_all_clusters` (meshwork has no load
/// reporting yet).
const CLIENT_FEATURES: &[&str] = &["xds.config.resource-in-sotw"];

/// The `node` of the bootstrap: identifies this client to the control plane.
///
/// `user_agent_name`, `user_agent_version` and `client_features` are not configured: they
/// are meshwork's own (`meshwork`, this crate's version, and the well-known client features
/// meshwork implements) and added by [`Node::to_proto`].
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Node {
    /// `node.id`; Istio's looks like `sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local`.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.locality`; `Some` when the bootstrap has the field, even as `{}`.
    pub locality: Option<Locality>,
    /// `node.metadata`: any JSON object (nested objects, lists and nulls included).
    pub metadata: Map<String, Value>,
}

impl Node {
    /// A node with this id and nothing else.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }

    /// The `envoy.config.core.v3.Node` to send, with meshwork's user agent and client
    /// features. The metadata becomes a `google.protobuf.Struct` (numbers become doubles, as
    /// in every JSON-to-Struct mapping); an empty locality and empty metadata are left unset.
    pub fn to_proto(&self) -> core::Node {
        core::Node {
            id: self.id.clone(),
            cluster: self.cluster.clone(),
            metadata: (!self.metadata.is_empty()).then(|| json_object_to_struct(&self.metadata)),
            locality: self
                .locality
                .as_ref()
                .filter(|l| !l.is_empty())
                .map(|l| core::Locality {
                    region: l.region.clone(),
                    zone: l.zone.clone(),
                    sub_zone: l.sub_zone.clone(),
                }),
            user_agent_name: USER_AGENT_NAME.to_owned(),
            user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
                USER_AGENT_VERSION.to_owned(),
            )),
            client_features: CLIENT_FEATURES.iter().map(|&f| f.to_owned()).collect(),
            ..core::Node::default()
        }
    }
}

/// `node.locality`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Locality {
    /// The region.
    pub region: String,
    /// The zone.
    pub zone: String,
    /// The sub-zone.
    pub sub_zone: String,
}

impl Locality {
    /// A locality from its three parts (any may be empty).
    pub fn new(
        region: impl Into<String>,
        zone: impl Into<String>,
        sub_zone: impl Into<String>,
    ) -> Self {
        Self {
            region: region.into(),
            zone: zone.into(),
            sub_zone: sub_zone.into(),
        }
    }

    /// Whether all three parts are empty.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.sub_zone.is_empty()
    }
}

fn json_object_to_struct(map: &Map<String, Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_proto_value(v)))
            .collect::<HashMap<_, _>>(),
    }
}

fn json_to_proto_value(value: &Value) -> ProtoValue {
    let kind = match value {
        Value::Null => Kind::NullValue(NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        // serde_json numbers always have an f64 form (large integers lose precision, as they
        // do in every JSON-to-Struct conversion).
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_proto_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(json_object_to_struct(map)),
    };
    ProtoValue { kind: Some(kind) }
}

/// Parses `node` (absent or `null` gives an empty node).
pub(super) fn parse_node(
    value: Option<&Value>,
    path: &str,
    unknown: &mut Vec<String>,
) -> Result<Node, BootstrapError> {
    let Some(value) = value else {
        return Ok(Node::default());
    };
    let map = as_object(value, path)?;
    record_unknown(
        map,
        &["id", "cluster", "locality", "metadata"],
        path,
        unknown,
    );
    let locality = get(map, "locality")
        .map(|v| parse_locality(v, &child(path, "locality"), unknown))
        .transpose()?;
    let metadata = match get(map, "metadata") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(wrong_type(&child(path, "metadata"), "an object", other)),
    };
    Ok(Node {
        id: opt_str(map, "id", path)?.unwrap_or_default().to_owned(),
        cluster: opt_str(map, "cluster", path)?
            .unwrap_or_default()
            .to_owned(),
        locality,
        metadata,
    })
}

fn parse_locality(
    value: &Value,
    path: &str,
    unknown: &mut Vec<String>,
) -> Result<Locality, BootstrapError> {
    let map = as_object(value, path)?;
    record_unknown(map, &["region", "zone", "sub_zone"], path, unknown);
    let part = |key| -> Result<String, BootstrapError> {
        Ok(opt_str(map, key, path)?.unwrap_or_default().to_owned())
    };
    Ok(Locality {
        region: part("region")?,
        zone: part("zone")?,
        sub_zone: part("sub_zone")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use serde_json::json;

    fn parse(v: Value) -> Result<(Node, Vec<String>), BootstrapError> {
        let mut unknown = Vec::new();
        let n = parse_node(Some(&v), "node", &mut unknown)?;
        Ok((n, unknown))
    }

    fn kind(v: &ProtoValue) -> &Kind {
        v.kind.as_ref().expect("value has a kind")
    }

    #[test]
    fn metadata_becomes_a_struct_with_nested_values() {
        let (node, _) = parse(json!({
            "id": "sidecar~10.0.0.1~echo-1.default~default.svc.cluster.local",
            "metadata": {
                "GENERATOR": "grpc",
                "UserAgentVersionType": null,
                "ENVOY_STATUS_PORT": 15021,
                "RATIO": 0.25,
                "NEGATIVE": -3,
                "SIDECAR": true,
                "LABELS": {"app": "echo", "nested": {"deeper": [1, "two", null, {"k": false}]}},
                "PILOT_SAN": ["istiod.istio-system.svc"],
                "EMPTY": {}
            }
        }))
        .unwrap();
        let proto = node.to_proto();
        let md = proto.metadata.as_ref().expect("metadata is set");
        let f = |k: &str| kind(&md.fields[k]).clone();
        assert_eq!(f("GENERATOR"), Kind::StringValue("grpc".into()));
        assert_eq!(f("UserAgentVersionType"), Kind::NullValue(0));
        assert_eq!(f("ENVOY_STATUS_PORT"), Kind::NumberValue(15021.0));
        assert_eq!(f("RATIO"), Kind::NumberValue(0.25));
        assert_eq!(f("NEGATIVE"), Kind::NumberValue(-3.0));
        assert_eq!(f("SIDECAR"), Kind::BoolValue(true));
        assert_eq!(
            f("PILOT_SAN"),
            Kind::ListValue(ListValue {
                values: vec![ProtoValue {
                    kind: Some(Kind::StringValue("istiod.istio-system.svc".into()))
                }]
            })
        );
        assert_eq!(f("EMPTY"), Kind::StructValue(Struct::default()));
        let Kind::StructValue(labels) = f("LABELS") else {
            panic!("LABELS is not a struct")
        };
        assert_eq!(
            kind(&labels.fields["app"]),
            &Kind::StringValue("echo".into())
        );
        let Kind::StructValue(nested) = kind(&labels.fields["nested"]) else {
            panic!("nested is not a struct")
        };
        let Kind::ListValue(deeper) = kind(&nested.fields["deeper"]) else {
            panic!("deeper is not a list")
        };
        let kinds: Vec<_> = deeper.values.iter().map(|v| kind(v).clone()).collect();
        assert_eq!(kinds[0], Kind::NumberValue(1.0));
        assert_eq!(kinds[1], Kind::StringValue("two".into()));
        assert_eq!(kinds[2], Kind::NullValue(0));
        let Kind::StructValue(last) = &kinds[3] else {
            panic!("not a struct")
        };
        assert_eq!(kind(&last.fields["k"]), &Kind::BoolValue(false));

        // And it survives the wire.
        let decoded = core::Node::decode(proto.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, proto);
    }

    #[test]
    fn to_proto_adds_meshwork_identity() {
        let mut node = Node::new("n1");
        node.cluster = "c".into();
        node.locality = Some(Locality::new("r", "z", "s"));
        let p = node.to_proto();
        assert_eq!(p.id, "n1");
        assert_eq!(p.cluster, "c");
        assert_eq!(p.user_agent_name, "meshwork");
        assert_eq!(
            p.user_agent_version_type,
            Some(core::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into()
            ))
        );
        assert_eq!(p.client_features, ["xds.config.resource-in-sotw"]);
        assert!(
            !p.client_features
                .iter()
                .any(|f| f == "envoy.lb.does_not_support_overprovisioning")
        );
        let l = p.locality.unwrap();
        assert_eq!(
            (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()),
            ("r", "z", "s")
        );
        assert!(p.metadata.is_none(), "empty metadata is left unset");
    }

    #[test]
    fn empty_locality_is_allowed_and_not_sent() {
        let (node, _) = parse(json!({"id": "x", "locality": {}})).unwrap();
        assert_eq!(node.locality, Some(Locality::default()));
        assert!(node.to_proto().locality.is_none());
        let (node, _) = parse(json!({"id": "x", "locality": {"zone": "a"}})).unwrap();
        assert_eq!(node.locality, Some(Locality::new("", "a", "")));
        assert_eq!(node.to_proto().locality.unwrap().zone, "a");
    }

    #[test]
    fn absent_node_is_empty() {
        let mut unknown = Vec::new();
        assert_eq!(
            parse_node(None, "node", &mut unknown).unwrap(),
            Node::default()
        );
        let (node, _) = parse(json!({})).unwrap();
        assert_eq!(node, Node::default());
    }

    #[test]
    fn unknown_node_fields_are_recorded() {
        // Istio's agent marshals the Go proto struct, which adds this key at node level.
        let (node, unknown) = parse(json!({
            "id": "x", "UserAgentVersionType": null, "locality": {"planet": "earth"}
        }))
        .unwrap();
        assert_eq!(node.id, "x");
        assert_eq!(
            unknown,
            ["node.UserAgentVersionType", "node.locality.planet"]
        );
    }

    #[test]
    fn malformed_node_fields_name_their_path() {
        let cases = [
            (json!([]), "node: expected an object, got an array"),
            (json!({"id": 1}), "node.id: expected a string, got 1"),
            (
                json!({"cluster": false}),
                "node.cluster: expected a string, got false",
            ),
            (
                json!({"locality": "us"}),
                "node.locality: expected an object, got \"us\"",
            ),
            (
                json!({"locality": {"zone": 3}}),
                "node.locality.zone: expected a string, got 3",
            ),
            (
                json!({"locality": {"sub_zone": []}}),
                "node.locality.sub_zone: expected a string, got an array",
            ),
            (
                json!({"metadata": [1]}),
                "node.metadata: expected an object, got an array",
            ),
            (
                json!({"metadata": "k=v"}),
                "node.metadata: expected an object, got \"k=v\"",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(
                parse(json.clone()).unwrap_err().to_string(),
                want,
                "for {json}"
            );
        }
    }
}
