//! Breaking the glass in the audit trail, on both backends: the grant and every access it
//! opens are recorded as emergency treatment (`ETREAT`) with the clinician's reason, and an
//! access refused for want of a care relationship is recorded as refused. And a clinician's
//! read, whose need-to-know check finds the patients of what it reads, names every one of
//! them in its record, in care or not.

use hygie_hub::{Caller, Hub, HubConfig};
use hygie_policy::{Principal, ScopeSet, TokenAccess};
use hygie_store::testing::TestBackend;
use hygie_store::{SharedStore, StoreExt};
use serde_json::{Value, json};

type Backend = TestBackend;

hygie_store::on_both_backends!(
    a_broken_glass_is_audited_as_emergency_treatment,
    a_clinicians_read_names_every_patient_of_what_it_read
);

fn clinician(reason: Option<&str>) -> Caller {
    let mut caller = Caller::new(
        Principal::token(
            "Practitioner/doc1",
            TokenAccess {
                token_id: Some("t1".into()),
                roles: vec!["clinician".into()],
                scopes: ScopeSet::parse("user/*.cruds", |_| true).unwrap(),
                patient: None,
            },
        ),
        "req",
    );
    caller.break_glass = reason.map(str::to_owned);
    caller
}

/// Creates `body` as the operator; its id.
async fn create(hub: &Hub, resource_type: &str, body: Value) -> String {
    let operator = Caller::new(Principal::development(), "load");
    hub.create(&operator, resource_type, body, None)
        .await
        .unwrap()
        .stored
        .id
}

/// A heart rate of `Patient/{patient}`, with the extra elements given.
fn heart_rate(patient: &str, extra: Value) -> Value {
    let mut observation = json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")}
    });
    let extra = extra
        .as_object()
        .expect("extra elements are an object")
        .clone();
    observation
        .as_object_mut()
        .expect("an Observation is an object")
        .extend(extra);
    observation
}

async fn audit_events(store: &SharedStore) -> Vec<Value> {
    store
        .run(|tx| tx.audit_leaves(0, 10_000))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, leaf)| serde_json::from_slice(&leaf).unwrap())
        .collect()
}

async fn a_broken_glass_is_audited_as_emergency_treatment(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let patient = create(&hub, "Patient", json!({"resourceType": "Patient"})).await;
    let observation = create(&hub, "Observation", heart_rate(&patient, json!({}))).await;
    let refused = hub
        .read(&clinician(None), "Observation", &observation)
        .await
        .unwrap_err();
    assert_eq!(refused.status, 403);
    let before = audit_events(&backend.store).await.len();
    let reason = "unconscious in the ER";
    hub.read(&clinician(Some(reason)), "Observation", &observation)
        .await
        .unwrap();
    let events = audit_events(&backend.store).await;
    let new: Vec<&Value> = events[before..].iter().collect();
    let subtypes: Vec<&str> = new
        .iter()
        .map(|e| e["subtype"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(subtypes, ["break-the-glass", "read"], "{new:#?}");
    for event in &new {
        assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
        assert_eq!(event["purposeOfEvent"][0]["text"], reason);
        assert_eq!(event["outcome"], "0");
    }
    assert_eq!(
        new[0]["entity"][0]["what"]["reference"],
        format!("Patient/{patient}")
    );
    // The refused read before the glass was broken is on record as refused, with no purpose.
    let refusal = &events[before - 1];
    assert_eq!(refusal["subtype"][0]["code"], "read");
    assert_eq!(refusal["outcome"], "4");
    assert!(refusal.get("purposeOfEvent").is_none());
    // The grant then opens the patient without a reason; those reads are plain treatment.
    hub.read(&clinician(None), "Observation", &observation)
        .await
        .unwrap();
    let last = audit_events(&backend.store).await.pop().unwrap();
    assert!(last.get("purposeOfEvent").is_none());
    assert_eq!(last["outcome"], "0");
}

/// A read's record names every patient of what it read, not only the ones in care that let
/// it through (the record takes them from the need-to-know check's lookup, kept in the mask).
async fn a_clinicians_read_names_every_patient_of_what_it_read(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let mut patients = Vec::new();
    for _ in 0..2 {
        patients.push(create(&hub, "Patient", json!({"resourceType": "Patient"})).await);
    }
    let (in_care, other) = (&patients[0], &patients[1]);
    let today = time::OffsetDateTime::now_utc().date().to_string();
    create(
        &hub,
        "Encounter",
        json!({
            "resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": format!("Patient/{in_care}")},
            "participant": [{"individual": {"reference": "Practitioner/doc1"}}],
            "period": {"start": today}
        }),
    )
    .await;
    // Measured on the patient in care; performed by the other one (a patient may perform
    // an observation on another, a parent of a child for instance).
    let performed = json!({"performer": [{"reference": format!("Patient/{other}")}]});
    let observation = create(&hub, "Observation", heart_rate(in_care, performed)).await;
    hub.read(&clinician(None), "Observation", &observation)
        .await
        .unwrap();
    let read = audit_events(&backend.store).await.pop().unwrap();
    assert_eq!(read["subtype"][0]["code"], "read");
    assert_eq!(read["outcome"], "0");
    let named: Vec<&str> = read["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entity| entity["role"]["code"] == "1")
        .map(|entity| entity["what"]["reference"].as_str().unwrap())
        .collect();
    let mut expected = vec![format!("Patient/{in_care}"), format!("Patient/{other}")];
    expected.sort();
    assert_eq!(named, expected, "{read:#}");
    // The other patient is out of care: their own data is refused.
    let theirs = create(&hub, "Observation", heart_rate(other, json!({}))).await;
    let refused = hub
        .read(&clinician(None), "Observation", &theirs)
        .await
        .unwrap_err();
    assert_eq!(refused.status, 403);
}
