//! `_summary=true` and `_elements` on both backends: in a search (matches cut down, included
//! resources whole, paging links keep it) and in a read or vread.

use hygie_hub::{Caller, Hub, HubConfig, SearchScope};
use hygie_policy::Principal;
use hygie_store::testing::TestBackend;
use serde_json::{Value, json};

type Backend = TestBackend;

hygie_store::on_both_backends!(
    a_search_returns_summaries_of_its_matches,
    included_resources_stay_whole,
    paging_links_keep_the_summary,
    a_read_returns_a_summary_or_the_elements_asked,
);

fn developer() -> Caller {
    Caller::new(Principal::development(), "test")
}

fn patient(family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
        "identifier": [{"system": "urn:oid:1.2.250.1.999", "value": family}],
        "name": [{"family": family, "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "photo": [{"contentType": "image/png", "data": "iVBORw0KGgo="}],
        "contact": [{"name": {"family": "Next-of-kin"}}],
        "communication": [{"language": {"text": "French"}}],
        "link": [{"id": "l", "other": {"reference": "Patient/other"}, "type": "seealso"}],
    })
}

fn observation(subject: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"text": "vital-signs"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "Blood pressure"},
        "subject": {"reference": format!("Patient/{subject}")},
        "note": [{"text": "after exercise"}],
        "component": [{
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mm[Hg]"},
            "interpretation": [{"text": "normal"}],
        }],
    })
}

async fn search(hub: &Hub, resource_type: &str, query: &str, strict: bool) -> Value {
    let scope = SearchScope {
        resource_type: resource_type.to_owned(),
        compartment: None,
    };
    let bytes = hub
        .search(&developer(), scope, query, strict)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    serde_json::from_slice(&bytes).unwrap()
}

fn entries<'b>(bundle: &'b Value, mode: &str) -> Vec<&'b Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| &e["resource"])
                .collect()
        })
        .unwrap_or_default()
}

fn subsetted(resource: &Value) -> bool {
    resource["meta"]["tag"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
}

/// The summary of `patient("…")`: what R4 marks summary, nothing else.
fn assert_patient_summary(resource: &Value) {
    assert!(subsetted(resource), "{resource}");
    let mut keys: Vec<&str> = resource
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "birthDate",
            "gender",
            "id",
            "identifier",
            "link",
            "meta",
            "name",
            "resourceType"
        ]
    );
    // Inside the kept BackboneElement, only its summary children.
    assert_eq!(
        resource["link"],
        json!([{"other": {"reference": "Patient/other"}, "type": "seealso"}])
    );
    assert_eq!(resource["name"][0]["given"], json!(["Claire"]));
    assert_eq!(resource["meta"]["versionId"], "1");
}

async fn a_search_returns_summaries_of_its_matches(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    hub.create(&caller, "Patient", patient("Martin"), None)
        .await
        .unwrap();
    // Lenient and strict alike: nothing ignored, nothing refused.
    for strict in [false, true] {
        let bundle = search(&hub, "Patient", "family=Martin&_summary=true", strict).await;
        assert!(entries(&bundle, "outcome").is_empty(), "{bundle}");
        let matches = entries(&bundle, "match");
        assert_eq!(matches.len(), 1);
        assert_patient_summary(matches[0]);
    }
    // The other values still do what they did.
    let full = search(&hub, "Patient", "_summary=false", true).await;
    assert!(!subsetted(entries(&full, "match")[0]));
    assert!(entries(&full, "match")[0].get("photo").is_some());
    let data = search(&hub, "Patient", "_summary=data", true).await;
    let data = entries(&data, "match")[0];
    assert!(data.get("text").is_none() && data.get("photo").is_some() && subsetted(data));
}

async fn included_resources_stay_whole(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    let created = hub
        .create(&caller, "Patient", patient("Durand"), None)
        .await
        .unwrap();
    hub.create(
        &caller,
        "Observation",
        observation(&created.stored.id),
        None,
    )
    .await
    .unwrap();
    let bundle = search(
        &hub,
        "Observation",
        "_summary=true&_include=Observation:subject",
        true,
    )
    .await;
    let matched = entries(&bundle, "match");
    assert_eq!(matched.len(), 1);
    let observation = matched[0];
    assert!(subsetted(observation));
    for gone in ["category", "note"] {
        assert!(observation.get(gone).is_none(), "{gone}: {observation}");
    }
    assert_eq!(observation["status"], "final");
    assert_eq!(observation["code"]["text"], "Blood pressure");
    assert_eq!(
        observation["component"],
        json!([{
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mm[Hg]"},
        }])
    );
    let included = entries(&bundle, "include");
    assert_eq!(included.len(), 1);
    assert!(!subsetted(included[0]));
    assert!(included[0].get("photo").is_some() && included[0].get("contact").is_some());
}

async fn paging_links_keep_the_summary(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    for family in ["A", "B", "C"] {
        hub.create(&caller, "Patient", patient(family), None)
            .await
            .unwrap();
    }
    let mut bundle = search(&hub, "Patient", "_summary=true&_count=2", false).await;
    let mut seen = 0;
    for _ in 0..3 {
        for resource in entries(&bundle, "match") {
            assert_patient_summary(resource);
            seen += 1;
        }
        let next = bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
        let Some(next) = next else { break };
        let query = next.split_once('?').unwrap().1.to_owned();
        bundle = search(&hub, "Patient", &query, false).await;
    }
    assert_eq!(seen, 3);
}

async fn a_read_returns_a_summary_or_the_elements_asked(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    let created = hub
        .create(&caller, "Patient", patient("Petit"), None)
        .await
        .unwrap();
    let id = created.stored.id.clone();
    let read = |query: &'static str, strict: bool| {
        let (hub, caller, id) = (hub.clone(), caller.clone(), id.clone());
        async move {
            hub.read_with_query(&caller, "Patient", &id, query, strict)
                .await
        }
    };
    let body =
        |stored: &hygie_hub::Stored| -> Value { serde_json::from_slice(&stored.body).unwrap() };

    let summary = read("_summary=true", true).await.unwrap();
    assert_eq!(summary.version, 1, "the version read, as its ETag says");
    assert_patient_summary(&body(&summary));

    let elements = body(&read("_elements=photo,gender", false).await.unwrap());
    let mut keys: Vec<&str> = elements
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["gender", "id", "meta", "photo", "resourceType"]);
    assert!(subsetted(&elements));

    // No shaping asked: the stored bytes, untouched.
    let plain = hub.read(&caller, "Patient", &id).await.unwrap();
    for query in ["", "_summary=false", "_format=json&_pretty=true"] {
        assert_eq!(read(query, true).await.unwrap().body, plain.body, "{query}");
    }

    for (query, strict) in [
        ("_summary=count", false),
        ("_summary=maybe", false),
        ("_elements=nope", true),
    ] {
        let error = read(query, strict).await.unwrap_err();
        assert_eq!(error.status, 400, "{query}: {error}");
    }
    // An unknown type or a missing resource is still what it was.
    let unknown = hub
        .read_with_query(&caller, "Nope", &id, "_summary=true", false)
        .await
        .unwrap_err();
    assert_eq!(unknown.status, 404);
    let missing = hub
        .read_with_query(&caller, "Patient", "missing", "_summary=true", false)
        .await
        .unwrap_err();
    assert_eq!(missing.status, 404);

    let vread = hub
        .vread_with_query(&caller, "Patient", &id, "1", "_summary=true", false)
        .await
        .unwrap();
    assert_patient_summary(&body(&vread));
}
