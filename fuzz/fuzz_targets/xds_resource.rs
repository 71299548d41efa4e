//! Decoding and validating one xDS resource (`meshwork_xds::resource::decode`), the code
//! that reads every `Any` a control plane sends.
//!
//! Input: one flags byte, then the bytes of the `Any.value`.
//! - bits 0-1: the expected type (LDS, RDS, CDS, EDS); LDS decodes client (API) and server
//!   listeners alike, RDS the per-route filter overrides;
//! - bit 2: the bytes are an `envoy.service.discovery.v3.Resource` wrapper instead of the
//!   resource itself;
//! - bit 3: the `Any` carries another type's URL (the wrong-type path).
//!
//! Invariants: no panic; a decoded resource has the expected type; decoding is
//! deterministic (the same bytes give the same result twice).
#![no_main]

use envoy_types::pb::google::protobuf::Any;
use libfuzzer_sys::fuzz_target;
use meshwork_xds::resource::{RESOURCE_WRAPPER_TYPE_URL, ResourceType, decode};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, value)) = data.split_first() else {
        return;
    };
    let expected = ResourceType::ALL[usize::from(flags & 3)];
    let type_url = if flags & 4 != 0 {
        RESOURCE_WRAPPER_TYPE_URL
    } else if flags & 8 != 0 {
        ResourceType::ALL[usize::from((flags + 1) & 3)].type_url()
    } else {
        expected.type_url()
    };
    let any = Any {
        type_url: type_url.to_owned(),
        value: value.to_vec(),
    };
    let first = decode(expected, &any);
    if let Ok(resource) = &first {
        assert_eq!(resource.resource_type(), expected);
        // Every message a NACK or the dump shows must be printable.
        let _ = format!("{resource:?}");
    }
    if let Err(err) = &first {
        let _ = err.to_string();
    }
    let second = decode(expected, &any);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "decode is not deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("decode is not deterministic: {first:?} then {second:?}"),
    }
});
