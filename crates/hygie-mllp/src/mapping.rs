//! HL7 v2 to FHIR R4, after the HL7 v2-to-FHIR mapping guide where practical: each message
//! becomes ONE transaction Bundle, so that it is stored whole or not at all.
//!
//! | message | what is written |
//! | --- | --- |
//! | ADT^A01, A04 | Patient (PID), Encounter (PV1), its Practitioners and ward Location |
//! | ADT^A02 | the same; the Encounter's location becomes PV1-3, PV1-6 is the one left |
//! | ADT^A03 | the same; the Encounter is finished (PV1-45 ends it) |
//! | ADT^A08 | the same: patient and visit updated |
//! | ADT^A11 | the Encounter is cancelled |
//! | ADT^A28, A31 | Patient |
//! | ADT^A40 | Patient (PID, the survivor); MRG-1 names the prior patient, merged by the hub |
//! | ORU^R01 | per OBR: DiagnosticReport with its OBX as Observations |
//!
//! Records are matched by identifier, never by name: patients by PID-3 (the assigning
//! authority mapped to a system in the settings), visits by PV1-19, practitioners by XCN-1,
//! wards by PL-1, reports by the filler (else placer) order number. ADT messages are the
//! source of the demographics: they update the Patient; results only create one when it is
//! unknown. A field that cannot be mapped faithfully is refused with its location (AE),
//! never guessed.

use std::collections::BTreeMap;

use hygie_hl7v2::ack::ErrorLocation;
use hygie_hl7v2::{AckCode, AckError, ErrorCode, Message, Repetition, Segment};
use serde_json::{Map, Value, json};

/// What the mapping needs besides the message.
#[derive(Debug, Clone)]
pub struct MappingSettings {
    /// Assigning authority (HD-1 namespace id, or HD-2 universal id) to identifier system
    /// URI. Patients' identifiers need one; an ISO OID authority maps to `urn:oid:` by itself.
    pub identifier_systems: BTreeMap<String, String>,
    /// The zone of times sent without an offset.
    pub time_zone: jiff::tz::TimeZone,
}

impl Default for MappingSettings {
    fn default() -> MappingSettings {
        MappingSettings {
            identifier_systems: BTreeMap::new(),
            time_zone: jiff::tz::TimeZone::UTC,
        }
    }
}

/// A message mapped: the transaction to run, and for a merge the prior patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub bundle: Value,
    /// ADT^A40: the prior patient's identifier (system, value).
    pub merge_prior: Option<(String, String)>,
}

/// Why a message is not mapped: the acknowledgement code and the ERR to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: AckCode,
    pub error: AckError,
}

impl Refusal {
    fn new(code: AckCode, error: ErrorCode, location: Option<ErrorLocation>, text: String) -> Self {
        Refusal {
            code,
            error: AckError {
                code: error,
                location,
                diagnostic: text,
            },
        }
    }
}

/// The events mapped, by message type.
pub const SUPPORTED_EVENTS: &[(&str, &[&str])] = &[
    (
        "ADT",
        &[
            "A01", "A02", "A03", "A04", "A08", "A11", "A28", "A31", "A40",
        ],
    ),
    ("ORU", &["R01"]),
];

/// A segment with its 1-based position in the message, for error locations.
#[derive(Clone, Copy)]
struct Seg<'m> {
    segment: &'m Segment,
    position: usize,
}

impl<'m> Seg<'m> {
    /// Field `number`, component 1, trimmed (FHIR values never start or end with spaces).
    fn value(&self, number: usize) -> &'m str {
        self.segment.value(number).trim()
    }

    fn repetitions(&self, number: usize) -> impl Iterator<Item = &'m Repetition> + 'm {
        self.segment
            .field(number)
            .map(|f| f.repetitions.as_slice())
            .unwrap_or(&[])
            .iter()
            .filter(|r| !r.is_empty())
    }

    fn at(&self, field: usize) -> Option<ErrorLocation> {
        Some(ErrorLocation {
            segment_id: self.segment.name.clone(),
            sequence: self.position,
            field: Some(field),
            ..ErrorLocation::default()
        })
    }

    fn error(&self, field: usize, code: ErrorCode, text: impl Into<String>) -> Refusal {
        Refusal::new(AckCode::Error, code, self.at(field), text.into())
    }
}

/// Component `n` (1-based) of a repetition, sub-component 1.
fn comp(repetition: &Repetition, n: usize) -> &str {
    repetition
        .component(n)
        .map(|c| c.value().trim())
        .unwrap_or("")
}

/// Sub-component `s` of component `n`.
fn sub(repetition: &Repetition, n: usize, s: usize) -> &str {
    repetition
        .component(n)
        .and_then(|c| c.subcomponent(s))
        .map(str::trim)
        .unwrap_or("")
}

/// A DiagnosticReport while its OBX are read: the resource, its order number, its results.
struct OpenReport {
    resource: Map<String, Value>,
    order: Option<String>,
    results: Vec<Value>,
}

struct Context<'a> {
    settings: &'a MappingSettings,
    /// MSH-4-1, the sending facility: the namespace of its local codes and numbers.
    facility: String,
    entries: Vec<Value>,
    /// Conditional URL of each resource already in the transaction, to its fullUrl.
    seen: BTreeMap<String, String>,
}

/// Maps a parsed message (the listener has checked MSH: sender, version, processing id).
pub fn map_message(message: &Message, settings: &MappingSettings) -> Result<Mapped, Refusal> {
    let (kind, event, _) = message.message_type();
    let segments: Vec<Seg> = message
        .segments
        .iter()
        .enumerate()
        .map(|(i, segment)| Seg {
            segment,
            position: i + 1,
        })
        .collect();
    let msh = segments[0];
    let events = SUPPORTED_EVENTS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, events)| *events)
        .ok_or_else(|| {
            Refusal::new(
                AckCode::Reject,
                ErrorCode::UnsupportedMessageType,
                msh.at(9),
                format!("message type {kind:?} is not taken by this hub (ADT and ORU are)"),
            )
        })?;
    // Some senders leave MSH-9-2 empty and put the event in EVN-1.
    let event = if event.is_empty() {
        segments
            .iter()
            .find(|s| s.segment.name == "EVN")
            .map(|s| s.value(1))
            .unwrap_or("")
    } else {
        event
    };
    if !events.contains(&event) {
        return Err(Refusal::new(
            AckCode::Reject,
            ErrorCode::UnsupportedEventCode,
            msh.at(9),
            format!(
                "{kind}^{event} is not taken by this hub (it takes {kind} {})",
                events.join(", ")
            ),
        ));
    }
    let mut context = Context {
        settings,
        facility: message.sending_facility().to_owned(),
        entries: Vec::new(),
        seen: BTreeMap::new(),
    };
    let mut merge_prior = None;
    match kind {
        "ADT" => {
            let pid = required_segment(&segments, "PID")?;
            let demographics_only = matches!(event, "A28" | "A31" | "A40");
            let patient = context.patient(pid, Demographics::Update)?;
            if event == "A40" {
                let mrg = required_segment(&segments, "MRG")?;
                merge_prior = Some(context.patient_identifier(mrg, 1)?);
            }
            if !demographics_only {
                let pv1 = required_segment(&segments, "PV1")?;
                context.encounter(pv1, event, &patient)?;
            }
        }
        _ => context.results(&segments)?,
    }
    Ok(Mapped {
        bundle: json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": context.entries,
        }),
        merge_prior,
    })
}

fn required_segment<'m>(segments: &[Seg<'m>], name: &str) -> Result<Seg<'m>, Refusal> {
    segments
        .iter()
        .find(|s| s.segment.name == name)
        .copied()
        .ok_or_else(|| {
            Refusal::new(
                AckCode::Error,
                ErrorCode::SegmentSequenceError,
                Some(ErrorLocation {
                    segment_id: name.to_owned(),
                    ..ErrorLocation::default()
                }),
                format!("the message has no {name} segment"),
            )
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Demographics {
    /// The message is the source of the patient's demographics.
    Update,
    /// Only create the patient when unknown.
    CreateIfUnknown,
}

impl Context<'_> {
    fn full_url() -> String {
        format!("urn:uuid:{}", uuid::Uuid::new_v4())
    }

    /// Adds `resource` once per conditional URL: PUT `Type?query` (update or create) or POST
    /// with `ifNoneExist` (create only when unknown). Returns its fullUrl.
    fn add(&mut self, resource: Value, condition: Option<(String, bool)>) -> String {
        let resource_type = resource["resourceType"].as_str().unwrap_or("").to_owned();
        if let Some((query, _)) = &condition
            && let Some(url) = self.seen.get(&format!("{resource_type}?{query}"))
        {
            return url.clone();
        }
        let full_url = Context::full_url();
        let request = match &condition {
            Some((query, true)) => {
                json!({"method": "PUT", "url": format!("{resource_type}?{query}")})
            }
            Some((query, false)) => {
                json!({"method": "POST", "url": resource_type, "ifNoneExist": query})
            }
            None => json!({"method": "POST", "url": resource_type}),
        };
        if let Some((query, _)) = condition {
            self.seen
                .insert(format!("{resource_type}?{query}"), full_url.clone());
        }
        self.entries.push(json!({
            "fullUrl": full_url,
            "resource": resource,
            "request": request,
        }));
        full_url
    }

    /// A system for the local numbers of the sending facility (visits, orders, staff).
    fn local_system(&self, what: &str) -> String {
        format!("urn:hygie:hl7v2:{}:{what}", urn_part(&self.facility))
    }

    /// The system of an assigning authority (HD given as sub-components or components).
    fn authority_system(
        &self,
        namespace: &str,
        universal: &str,
        universal_type: &str,
    ) -> Option<String> {
        let systems = &self.settings.identifier_systems;
        if !namespace.is_empty()
            && let Some(system) = systems.get(namespace)
        {
            return Some(system.clone());
        }
        if !universal.is_empty() {
            if let Some(system) = systems.get(universal) {
                return Some(system.clone());
            }
            match universal_type {
                "ISO" if is_oid(universal) => return Some(format!("urn:oid:{universal}")),
                "UUID" | "GUID" if uuid::Uuid::parse_str(universal).is_ok() => {
                    return Some(format!("urn:uuid:{}", universal.to_lowercase()));
                }
                "URI" if universal.contains(':') => return Some(universal.to_owned()),
                _ => {}
            }
        }
        None
    }

    /// The patient identifier in `field` of `segment` (CX): the first repetition whose
    /// authority has a system, preferring a medical record number (CX-5 `MR`).
    fn patient_identifier(&self, segment: Seg, field: usize) -> Result<(String, String), Refusal> {
        let mut found: Vec<(bool, String, String)> = Vec::new();
        let mut unknown = Vec::new();
        for repetition in segment.repetitions(field) {
            let value = comp(repetition, 1);
            if value.is_empty() {
                continue;
            }
            let (namespace, universal, kind) = (
                sub(repetition, 4, 1),
                sub(repetition, 4, 2),
                sub(repetition, 4, 3),
            );
            match self.authority_system(namespace, universal, kind) {
                Some(system) => found.push((comp(repetition, 5) == "MR", system, value.to_owned())),
                None if namespace.is_empty() && universal.is_empty() => {
                    unknown.push(format!("none (CX-4 is empty for {value:?})"));
                }
                None => unknown.push(
                    [namespace, universal]
                        .into_iter()
                        .filter(|part| !part.is_empty())
                        .collect::<Vec<_>>()
                        .join("&"),
                ),
            }
        }
        found.sort_by_key(|(mr, _, _)| !mr);
        match found.into_iter().next() {
            Some((_, system, value)) => Ok((system, value)),
            None if unknown.is_empty() => Err(segment.error(
                field,
                ErrorCode::RequiredFieldMissing,
                format!("{}-{field} holds no patient identifier", segment.segment.name),
            )),
            None => Err(segment.error(
                field,
                ErrorCode::TableValueNotFound,
                format!(
                    "{}-{field}: no identifier system is configured for the assigning authority {} ([hl7] identifier_systems)",
                    segment.segment.name,
                    unknown.join(", ")
                ),
            )),
        }
    }

    /// The Patient of PID; returns its fullUrl.
    fn patient(&mut self, pid: Seg, demographics: Demographics) -> Result<String, Refusal> {
        let (system, value) = self.patient_identifier(pid, 3)?;
        let mut patient = Map::new();
        patient.insert("resourceType".into(), json!("Patient"));
        let mut identifiers = Vec::new();
        for repetition in pid.repetitions(3) {
            let id_value = comp(repetition, 1);
            let Some(id_system) = self.authority_system(
                sub(repetition, 4, 1),
                sub(repetition, 4, 2),
                sub(repetition, 4, 3),
            ) else {
                continue;
            };
            if id_value.is_empty() {
                continue;
            }
            let mut identifier = json!({"system": id_system, "value": id_value});
            let kind = comp(repetition, 5);
            if !kind.is_empty() {
                identifier["type"] = json!({"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": kind,
                }]});
            }
            if id_system == system && id_value == value {
                identifier["use"] = json!("usual");
            }
            identifiers.push(identifier);
        }
        patient.insert("identifier".into(), Value::Array(identifiers));
        patient.insert("active".into(), json!(true));
        let names: Vec<Value> = pid.repetitions(5).filter_map(human_name).collect();
        if !names.is_empty() {
            patient.insert("name".into(), Value::Array(names));
        }
        let mut telecom: Vec<Value> = pid
            .repetitions(13)
            .filter_map(|r| contact_point(r, "home"))
            .collect();
        telecom.extend(pid.repetitions(14).filter_map(|r| contact_point(r, "work")));
        if !telecom.is_empty() {
            patient.insert("telecom".into(), Value::Array(telecom));
        }
        let gender = pid.value(8);
        if !gender.is_empty() {
            let gender = match gender {
                "M" => "male",
                "F" => "female",
                "O" | "A" | "X" => "other",
                "U" | "N" => "unknown",
                other => {
                    return Err(pid.error(
                        8,
                        ErrorCode::TableValueNotFound,
                        format!("PID-8: {other:?} is not a sex of table 0001 (F, M, O, U, A, N)"),
                    ));
                }
            };
            patient.insert("gender".into(), json!(gender));
        }
        let birth = pid.value(7);
        if !birth.is_empty() {
            let date = date_time(birth, &self.settings.time_zone)
                .map(|d| d.date)
                .ok_or_else(|| {
                    pid.error(
                        7,
                        ErrorCode::DataTypeError,
                        format!("PID-7: {birth:?} is not a date"),
                    )
                })?;
            patient.insert("birthDate".into(), json!(date));
        }
        let addresses: Vec<Value> = pid.repetitions(11).filter_map(address).collect();
        if !addresses.is_empty() {
            patient.insert("address".into(), Value::Array(addresses));
        }
        let death = pid.value(29);
        if !death.is_empty() {
            let when = date_time(death, &self.settings.time_zone).ok_or_else(|| {
                pid.error(
                    29,
                    ErrorCode::DataTypeError,
                    format!("PID-29: {death:?} is not a date and time"),
                )
            })?;
            patient.insert("deceasedDateTime".into(), json!(when.date_time));
        } else if pid.value(30) == "Y" {
            patient.insert("deceasedBoolean".into(), json!(true));
        }
        let query = hygie_fhir::search::identifier_query(&system, &value);
        Ok(self.add(
            Value::Object(patient),
            Some((query, demographics == Demographics::Update)),
        ))
    }

    /// A practitioner of an XCN: found or created by XCN-1; returns a Reference.
    fn practitioner(&mut self, xcn: &Repetition) -> Option<Value> {
        let id = comp(xcn, 1);
        let name = person_name(
            sub(xcn, 2, 1),
            &[comp(xcn, 3), comp(xcn, 4)],
            comp(xcn, 6),
            comp(xcn, 5),
        );
        let display = name
            .as_ref()
            .map(|(_, text)| text.clone())
            .unwrap_or_default();
        if id.is_empty() {
            return (!display.is_empty()).then(|| json!({"display": display}));
        }
        let system = self
            .authority_system(sub(xcn, 9, 1), sub(xcn, 9, 2), sub(xcn, 9, 3))
            .unwrap_or_else(|| self.local_system("practitioner"));
        let mut practitioner = json!({
            "resourceType": "Practitioner",
            "identifier": [{"system": system, "value": id}],
        });
        if let Some((name, _)) = name {
            practitioner["name"] = json!([name]);
        }
        let query = hygie_fhir::search::identifier_query(&system, id);
        let url = self.add(practitioner, Some((query, false)));
        let mut reference = json!({"reference": url});
        if !display.is_empty() {
            reference["display"] = json!(display);
        }
        Some(reference)
    }

    /// The ward of a PL (PL-1, point of care) as a Location found or created by name, and
    /// the Encounter.location entry that points at it with room and bed.
    fn location(&mut self, pl: &Repetition, status: &str) -> Option<Value> {
        let ward = comp(pl, 1);
        let parts: Vec<&str> = [comp(pl, 1), comp(pl, 2), comp(pl, 3)]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return None;
        }
        let display = match (comp(pl, 2), comp(pl, 3)) {
            ("", "") => ward.to_owned(),
            (room, "") => format!("{ward}, room {room}"),
            ("", bed) => format!("{ward}, bed {bed}"),
            (room, bed) => format!("{ward}, room {room}, bed {bed}"),
        };
        let mut reference = json!({"display": display.trim_start_matches(", ")});
        if !ward.is_empty() {
            let system = self.local_system("location");
            let location = json!({
                "resourceType": "Location",
                "identifier": [{"system": system, "value": ward}],
                "name": ward,
                "mode": "instance",
                "physicalType": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                    "code": "wa",
                    "display": "Ward",
                }]},
            });
            let query = hygie_fhir::search::identifier_query(&system, ward);
            reference["reference"] = json!(self.add(location, Some((query, false))));
        }
        Some(json!({"location": reference, "status": status}))
    }

    /// The Encounter of PV1 for an ADT event.
    /// PV1-19, the visit number, as (system, value): its assigning authority's system, or
    /// the facility's local one.
    fn visit_identifier(&self, pv1: Seg) -> Option<(String, String)> {
        let visit = pv1
            .repetitions(19)
            .next()
            .filter(|r| !comp(r, 1).is_empty())?;
        let system = self
            .authority_system(sub(visit, 4, 1), sub(visit, 4, 2), sub(visit, 4, 3))
            .unwrap_or_else(|| self.local_system("visit"));
        Some((system, comp(visit, 1).to_owned()))
    }

    /// PV1-2, the patient class (table 0004), as an `Encounter.class` coding.
    fn patient_class(pv1: Seg) -> Result<Value, Refusal> {
        let (code, display) = match pv1.value(2) {
            "I" | "B" => ("IMP", "inpatient encounter"),
            "O" | "R" | "C" | "N" => ("AMB", "ambulatory"),
            "E" => ("EMER", "emergency"),
            "P" => ("PRENC", "pre-admission"),
            "" => {
                return Err(pv1.error(
                    2,
                    ErrorCode::RequiredFieldMissing,
                    "PV1-2 (patient class) is empty",
                ));
            }
            other => {
                return Err(pv1.error(
                    2,
                    ErrorCode::TableValueNotFound,
                    format!("PV1-2: {other:?} is not a patient class of table 0004 (E, I, O, P, R, B, C, N)"),
                ));
            }
        };
        Ok(json!({
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": code,
            "display": display,
        }))
    }

    /// The visit results were taken in (ORU PV1): a reference to its Encounter, found by
    /// its number, or created with what the PV1 says if the admission has not come yet
    /// (status `unknown`; the ADT feed fills it in). `None` without a visit number.
    fn result_visit(&mut self, pv1: Seg, patient: &str) -> Result<Option<String>, Refusal> {
        let Some((system, value)) = self.visit_identifier(pv1) else {
            return Ok(None);
        };
        let encounter = json!({
            "resourceType": "Encounter",
            "identifier": [{"use": "official", "system": system, "value": value}],
            "status": "unknown",
            "class": Context::patient_class(pv1)?,
            "subject": {"reference": patient},
        });
        let query = hygie_fhir::search::identifier_query(&system, &value);
        Ok(Some(self.add(encounter, Some((query, false)))))
    }

    fn encounter(&mut self, pv1: Seg, event: &str, patient: &str) -> Result<(), Refusal> {
        let tz = &self.settings.time_zone;
        let visit_identifier = self.visit_identifier(pv1);
        if visit_identifier.is_none() && matches!(event, "A02" | "A03" | "A08" | "A11") {
            return Err(pv1.error(
                19,
                ErrorCode::RequiredFieldMissing,
                format!("PV1-19 (visit number) is needed to find the visit an {event} is about"),
            ));
        }
        let when = |field: usize| -> Result<Option<String>, Refusal> {
            let text = pv1.value(field);
            if text.is_empty() {
                return Ok(None);
            }
            date_time(text, tz)
                .map(|d| Some(d.date_time))
                .ok_or_else(|| {
                    pv1.error(
                        field,
                        ErrorCode::DataTypeError,
                        format!("PV1-{field}: {text:?} is not a date and time"),
                    )
                })
        };
        let admitted = when(44)?;
        let discharged = when(45)?;
        let status = match event {
            "A11" => "cancelled",
            "A03" => "finished",
            _ if discharged.is_some() => "finished",
            "A04" => "arrived",
            _ => "in-progress",
        };
        let mut encounter = json!({
            "resourceType": "Encounter",
            "status": status,
            "class": Context::patient_class(pv1)?,
            "subject": {"reference": patient},
        });
        if let Some((system, value)) = &visit_identifier {
            encounter["identifier"] =
                json!([{"use": "official", "system": system, "value": value}]);
        }
        let mut period = Map::new();
        if let Some(start) = admitted {
            period.insert("start".into(), json!(start));
        }
        if let Some(end) = discharged {
            period.insert("end".into(), json!(end));
        }
        if !period.is_empty() {
            encounter["period"] = Value::Object(period);
        }
        let mut participants = Vec::new();
        for (field, code, display) in [
            (7, "ATND", "attender"),
            (8, "REF", "referrer"),
            (9, "CON", "consultant"),
            (17, "ADM", "admitter"),
        ] {
            let repetitions: Vec<&Repetition> = pv1.repetitions(field).collect();
            for xcn in repetitions {
                if let Some(individual) = self.practitioner(xcn) {
                    participants.push(json!({
                        "type": [{"coding": [{
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": code,
                            "display": display,
                        }]}],
                        "individual": individual,
                    }));
                }
            }
        }
        if !participants.is_empty() {
            encounter["participant"] = Value::Array(participants);
        }
        let current_status = if status == "finished" {
            "completed"
        } else {
            "active"
        };
        let mut locations = Vec::new();
        if event == "A02"
            && let Some(prior) = pv1.repetitions(6).next()
            && let Some(left) = self.location(prior, "completed")
        {
            locations.push(left);
        }
        if let Some(current) = pv1.repetitions(3).next()
            && let Some(here) = self.location(current, current_status)
        {
            locations.push(here);
        }
        if !locations.is_empty() {
            encounter["location"] = Value::Array(locations);
        }
        let condition = visit_identifier
            .as_ref()
            .map(|(system, value)| (hygie_fhir::search::identifier_query(system, value), true));
        self.add(encounter, condition);
        Ok(())
    }

    /// ORU^R01: PID, then OBR groups each followed by their OBX.
    fn results(&mut self, segments: &[Seg]) -> Result<(), Refusal> {
        let mut patient: Option<String> = None;
        let mut visit: Option<String> = None;
        let mut report: Option<OpenReport> = None;
        let mut observations = 0usize;
        for segment in segments {
            match segment.segment.name.as_str() {
                "PID" => {
                    self.finish_report(report.take());
                    patient = Some(self.patient(*segment, Demographics::CreateIfUnknown)?);
                    visit = None;
                }
                "PV1" => {
                    if let Some(patient) = &patient {
                        visit = self.result_visit(*segment, patient)?;
                    }
                }
                "OBR" => {
                    self.finish_report(report.take());
                    let Some(patient) = &patient else {
                        return Err(Refusal::new(
                            AckCode::Error,
                            ErrorCode::SegmentSequenceError,
                            segment.at(1),
                            "an OBR before any PID".to_owned(),
                        ));
                    };
                    report = Some(self.report(*segment, patient, visit.as_deref())?);
                }
                "OBX" => {
                    let (Some(patient), Some(open)) = (&patient, &mut report) else {
                        return Err(Refusal::new(
                            AckCode::Error,
                            ErrorCode::SegmentSequenceError,
                            segment.at(1),
                            "an OBX outside of an OBR group".to_owned(),
                        ));
                    };
                    let effective = open.resource.get("effectiveDateTime").cloned();
                    let url = self.observation(
                        *segment,
                        (patient, visit.as_deref()),
                        open.order.as_deref(),
                        effective,
                    )?;
                    open.results.push(json!({"reference": url}));
                    observations += 1;
                }
                _ => {}
            }
        }
        self.finish_report(report.take());
        if patient.is_none() {
            return Err(required_segment(segments, "PID").err().unwrap_or_else(|| {
                Refusal::new(
                    AckCode::Error,
                    ErrorCode::SegmentSequenceError,
                    None,
                    "no PID".to_owned(),
                )
            }));
        }
        if observations == 0
            && !self
                .entries
                .iter()
                .any(|e| e["resource"]["resourceType"] == "DiagnosticReport")
        {
            return Err(Refusal::new(
                AckCode::Error,
                ErrorCode::SegmentSequenceError,
                None,
                "an ORU^R01 without OBR or OBX carries no result".to_owned(),
            ));
        }
        Ok(())
    }

    fn finish_report(&mut self, report: Option<OpenReport>) {
        if let Some(OpenReport {
            mut resource,
            order,
            results,
        }) = report
        {
            if !results.is_empty() {
                resource.insert("result".into(), Value::Array(results));
            }
            let condition = order.map(|order| {
                let system = self.local_system("order");
                (hygie_fhir::search::identifier_query(&system, &order), true)
            });
            self.add(Value::Object(resource), condition);
        }
    }

    /// The DiagnosticReport of an OBR (its results are added as the OBX follow).
    fn report(
        &mut self,
        obr: Seg,
        patient: &str,
        visit: Option<&str>,
    ) -> Result<OpenReport, Refusal> {
        let tz = &self.settings.time_zone;
        let order = [3, 2]
            .into_iter()
            .map(|f| obr.repetitions(f).next().map(|r| comp(r, 1)).unwrap_or(""))
            .find(|v| !v.is_empty())
            .map(str::to_owned);
        let code = obr
            .repetitions(4)
            .next()
            .and_then(codeable_concept)
            .ok_or_else(|| {
                obr.error(
                    4,
                    ErrorCode::RequiredFieldMissing,
                    "OBR-4 (universal service identifier) is empty",
                )
            })?;
        let status = match obr.value(25) {
            "F" => "final",
            "C" => "corrected",
            "P" => "preliminary",
            "A" | "R" | "S" => "partial",
            "I" | "O" => "registered",
            "X" => "cancelled",
            "" => "unknown",
            other => {
                return Err(obr.error(
                    25,
                    ErrorCode::TableValueNotFound,
                    format!("OBR-25: {other:?} is not a result status of table 0123"),
                ));
            }
        };
        let mut report = Map::new();
        report.insert("resourceType".into(), json!("DiagnosticReport"));
        if let Some(order) = &order {
            report.insert(
                "identifier".into(),
                json!([{"system": self.local_system("order"), "value": order}]),
            );
        }
        report.insert("status".into(), json!(status));
        report.insert(
            "category".into(),
            json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB", "display": "Laboratory"}]}]),
        );
        report.insert("code".into(), code);
        report.insert("subject".into(), json!({"reference": patient}));
        if let Some(visit) = visit {
            report.insert("encounter".into(), json!({"reference": visit}));
        }
        let observed = obr.value(7);
        if !observed.is_empty() {
            let when = date_time(observed, tz).ok_or_else(|| {
                obr.error(
                    7,
                    ErrorCode::DataTypeError,
                    format!("OBR-7: {observed:?} is not a date and time"),
                )
            })?;
            report.insert("effectiveDateTime".into(), json!(when.date_time));
        }
        let issued = obr.value(22);
        if !issued.is_empty() {
            let when = date_time(issued, tz).ok_or_else(|| {
                obr.error(
                    22,
                    ErrorCode::DataTypeError,
                    format!("OBR-22: {issued:?} is not a date and time"),
                )
            })?;
            if let Some(instant) = when.instant {
                report.insert("issued".into(), json!(instant));
            }
        }
        Ok(OpenReport {
            resource: report,
            order,
            results: Vec::new(),
        })
    }

    /// An OBX of the patient and visit `(patient, visit)`.
    fn observation(
        &mut self,
        obx: Seg,
        (patient, visit): (&str, Option<&str>),
        order: Option<&str>,
        effective: Option<Value>,
    ) -> Result<String, Refusal> {
        let tz = &self.settings.time_zone;
        let code_repetition = obx.repetitions(3).next();
        let code = code_repetition.and_then(codeable_concept).ok_or_else(|| {
            obx.error(
                3,
                ErrorCode::RequiredFieldMissing,
                "OBX-3 (observation identifier) is empty",
            )
        })?;
        let status = match obx.value(11) {
            "F" | "U" => "final",
            "C" => "corrected",
            "P" | "S" => "preliminary",
            "R" | "I" | "O" => "registered",
            "D" | "W" => "entered-in-error",
            "X" | "N" => "cancelled",
            "" => {
                return Err(obx.error(
                    11,
                    ErrorCode::RequiredFieldMissing,
                    "OBX-11 (result status) is empty",
                ));
            }
            other => {
                return Err(obx.error(
                    11,
                    ErrorCode::TableValueNotFound,
                    format!("OBX-11: {other:?} is not a result status of table 0085"),
                ));
            }
        };
        let mut observation = Map::new();
        observation.insert("resourceType".into(), json!("Observation"));
        let key = order.map(|order| {
            let code = code_repetition.map(|r| comp(r, 1)).unwrap_or("");
            let sub_id = obx.value(4);
            if sub_id.is_empty() {
                format!("{order}/{code}")
            } else {
                format!("{order}/{code}/{sub_id}")
            }
        });
        if let Some(key) = &key {
            observation.insert(
                "identifier".into(),
                json!([{"system": self.local_system("result"), "value": key}]),
            );
        }
        observation.insert("status".into(), json!(status));
        observation.insert(
            "category".into(),
            json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory", "display": "Laboratory"}]}]),
        );
        observation.insert("code".into(), code);
        observation.insert("subject".into(), json!({"reference": patient}));
        if let Some(visit) = visit {
            observation.insert("encounter".into(), json!({"reference": visit}));
        }
        let observed = obx.value(14);
        if !observed.is_empty() {
            let when = date_time(observed, tz).ok_or_else(|| {
                obx.error(
                    14,
                    ErrorCode::DataTypeError,
                    format!("OBX-14: {observed:?} is not a date and time"),
                )
            })?;
            observation.insert("effectiveDateTime".into(), json!(when.date_time));
        } else if let Some(effective) = effective {
            observation.insert("effectiveDateTime".into(), effective);
        }
        if let Some((name, value)) = self.observation_value(obx)? {
            observation.insert(name.into(), value);
        }
        let range = obx.value(7);
        if !range.is_empty() {
            observation.insert("referenceRange".into(), json!([reference_range(range)]));
        }
        let flags: Vec<Value> = obx
            .repetitions(8)
            .map(|r| comp(r, 1))
            .filter(|c| !c.is_empty())
            .map(|flag| {
                json!({"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": flag,
                }]})
            })
            .collect();
        if !flags.is_empty() {
            observation.insert("interpretation".into(), Value::Array(flags));
        }
        let condition = key.map(|key| {
            (
                hygie_fhir::search::identifier_query(&self.local_system("result"), &key),
                true,
            )
        });
        Ok(self.add(Value::Object(observation), condition))
    }

    /// OBX-5 by its type (OBX-2): the `value[x]` element and its content.
    fn observation_value(&self, obx: Seg) -> Result<Option<(&'static str, Value)>, Refusal> {
        let values: Vec<&Repetition> = obx.repetitions(5).collect();
        let Some(first) = values.first() else {
            return Ok(None);
        };
        let kind = obx.value(2);
        let text = || {
            values
                .iter()
                .map(|r| {
                    r.components
                        .iter()
                        .map(|c| c.value())
                        .collect::<Vec<_>>()
                        .join("^")
                })
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_owned()
        };
        Ok(Some(match kind {
            "NM" => {
                if values.len() > 1 {
                    return Err(obx.error(
                        5,
                        ErrorCode::DataTypeError,
                        "OBX-5: a numeric result (NM) with several repetitions",
                    ));
                }
                let number = comp(first, 1).trim();
                let number = decimal(number).ok_or_else(|| {
                    obx.error(
                        5,
                        ErrorCode::DataTypeError,
                        format!("OBX-5: {number:?} is not a number (OBX-2 is NM)"),
                    )
                })?;
                let mut quantity = json!({"value": number});
                if let Some(unit) = obx.repetitions(6).next() {
                    let code = comp(unit, 1);
                    if !code.is_empty() {
                        let label = if comp(unit, 2).is_empty() {
                            code
                        } else {
                            comp(unit, 2)
                        };
                        quantity["unit"] = json!(label);
                        if matches!(comp(unit, 3), "UCUM" | "ANS+" | "ISO+" | "") {
                            quantity["system"] = json!("http://unitsofmeasure.org");
                            quantity["code"] = json!(code);
                        }
                    }
                }
                ("valueQuantity", quantity)
            }
            "CE" | "CWE" | "CNE" | "CF" => {
                let concept = codeable_concept(first).ok_or_else(|| {
                    obx.error(
                        5,
                        ErrorCode::DataTypeError,
                        "OBX-5: a coded result without a code or text",
                    )
                })?;
                ("valueCodeableConcept", concept)
            }
            "DT" | "DTM" | "TS" => {
                let raw = comp(first, 1);
                let when = date_time(raw, &self.settings.time_zone).ok_or_else(|| {
                    obx.error(
                        5,
                        ErrorCode::DataTypeError,
                        format!("OBX-5: {raw:?} is not a date and time"),
                    )
                })?;
                ("valueDateTime", json!(when.date_time))
            }
            // Text; embedded data and references are kept as text too, not interpreted.
            _ => {
                let text = text();
                if text.is_empty() {
                    return Ok(None);
                }
                ("valueString", json!(text))
            }
        }))
    }
}

/// A decimal as JSON: integers stay integers; `.5` and `12.` are read as HL7 allows.
fn decimal(text: &str) -> Option<serde_json::Number> {
    let text = text.trim().trim_start_matches('+');
    if let Ok(integer) = text.parse::<i64>() {
        return Some(integer.into());
    }
    let value = text.parse::<f64>().ok().filter(|v| v.is_finite())?;
    if text.contains(['e', 'E', 'i', 'n', 'I', 'N']) {
        return None;
    }
    serde_json::Number::from_f64(value)
}

fn reference_range(range: &str) -> Value {
    if let Some((low, high)) = range.split_once('-')
        && let (Ok(l), Ok(h)) = (low.trim().parse::<f64>(), high.trim().parse::<f64>())
        && l.is_finite()
        && h.is_finite()
        && !low.trim().is_empty()
    {
        let number = |t: &str| decimal(t);
        if let (Some(low), Some(high)) = (number(low), number(high)) {
            return json!({"low": {"value": low}, "high": {"value": high}, "text": range});
        }
    }
    json!({"text": range})
}

/// CWE/CE/CNE to a CodeableConcept (identifier, text, coding system; alternate; original text).
fn codeable_concept(cwe: &Repetition) -> Option<Value> {
    let mut codings = Vec::new();
    for (code_at, display_at, system_at) in [(1, 2, 3), (4, 5, 6)] {
        let code = comp(cwe, code_at);
        if code.is_empty() {
            continue;
        }
        let mut coding = json!({"system": coding_system(comp(cwe, system_at)), "code": code});
        let display = comp(cwe, display_at);
        if !display.is_empty() {
            coding["display"] = json!(display);
        }
        codings.push(coding);
    }
    let text = [comp(cwe, 9), comp(cwe, 2)]
        .into_iter()
        .find(|t| !t.is_empty());
    if codings.is_empty() && text.is_none() {
        return None;
    }
    let mut concept = json!({});
    if !codings.is_empty() {
        concept["coding"] = Value::Array(codings);
    }
    if let Some(text) = text {
        concept["text"] = json!(text);
    }
    Some(concept)
}

/// Coding system names of HL7 table 0396 to FHIR system URIs.
fn coding_system(name: &str) -> String {
    match name {
        "LN" => "http://loinc.org".into(),
        "SCT" | "SNM" | "SNM3" | "SCT2" => "http://snomed.info/sct".into(),
        "UCUM" => "http://unitsofmeasure.org".into(),
        "I10" | "ICD10" => "http://hl7.org/fhir/sid/icd-10".into(),
        "I9" | "I9C" => "http://hl7.org/fhir/sid/icd-9-cm".into(),
        "CPT" | "C4" => "http://www.ama-assn.org/go/cpt".into(),
        "NDC" => "http://hl7.org/fhir/sid/ndc".into(),
        "RXNORM" => "http://www.nlm.nih.gov/research/umls/rxnorm".into(),
        "CVX" => "http://hl7.org/fhir/sid/cvx".into(),
        "" => "urn:hygie:hl7v2:codesystem:local".into(),
        other => match other.strip_prefix("HL7") {
            Some(table) if table.len() == 4 && table.chars().all(|c| c.is_ascii_digit()) => {
                format!("http://terminology.hl7.org/CodeSystem/v2-{table}")
            }
            _ => format!("urn:hygie:hl7v2:codesystem:{}", urn_part(other)),
        },
    }
}

/// XPN to HumanName: family (FN-1), given (XPN-2, XPN-3), suffix (XPN-4), prefix (XPN-5),
/// use (XPN-7, table 0200).
fn human_name(xpn: &Repetition) -> Option<Value> {
    let mut name = person_name(
        sub(xpn, 1, 1),
        &[comp(xpn, 2), comp(xpn, 3)],
        comp(xpn, 5),
        comp(xpn, 4),
    )?
    .0;
    let name_use = match comp(xpn, 7) {
        "L" => Some("official"),
        "D" => Some("usual"),
        "M" | "B" => Some("maiden"),
        "N" => Some("nickname"),
        "A" | "S" => Some("anonymous"),
        "C" => Some("old"),
        _ => None,
    };
    if let Some(name_use) = name_use {
        name["use"] = json!(name_use);
    }
    Some(name)
}

/// A HumanName from its parts, and the text a reference's display shows.
fn person_name(
    family: &str,
    given: &[&str],
    prefix: &str,
    suffix: &str,
) -> Option<(Value, String)> {
    let given: Vec<&str> = given.iter().copied().filter(|g| !g.is_empty()).collect();
    if family.is_empty() && given.is_empty() {
        return None;
    }
    let mut name = json!({});
    let mut text = Vec::new();
    if !prefix.is_empty() {
        name["prefix"] = json!([prefix]);
        text.push(prefix);
    }
    if !given.is_empty() {
        name["given"] = json!(given);
        text.extend(&given);
    }
    if !family.is_empty() {
        name["family"] = json!(family);
        text.push(family);
    }
    if !suffix.is_empty() {
        name["suffix"] = json!([suffix]);
        text.push(suffix);
    }
    // No HumanName.text: v2 sends the parts, and a text would only repeat them (and, with
    // names searched through blind indexes, triple the rows of each name).
    Some((name, text.join(" ")))
}

/// XAD to Address (street SAD-1 and XAD-2, city, state, postal code, country, use XAD-7).
fn address(xad: &Repetition) -> Option<Value> {
    let mut address = Map::new();
    // SAD: street address, or street name and dwelling number in sub-components.
    let street = xad
        .component(1)
        .map(|c| {
            c.subcomponents
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let lines: Vec<&str> = [street.as_str(), comp(xad, 2)]
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    if !lines.is_empty() {
        address.insert("line".into(), json!(lines));
    }
    for (component, element) in [(3, "city"), (4, "state"), (5, "postalCode"), (6, "country")] {
        let value = comp(xad, component).trim();
        if !value.is_empty() {
            address.insert(element.into(), json!(value));
        }
    }
    if address.is_empty() {
        return None;
    }
    match comp(xad, 7) {
        "H" | "P" => {
            address.insert("use".into(), json!("home"));
        }
        "B" | "O" => {
            address.insert("use".into(), json!("work"));
        }
        "C" => {
            address.insert("use".into(), json!("temp"));
        }
        "BA" => {
            address.insert("use".into(), json!("old"));
        }
        "M" => {
            address.insert("type".into(), json!("postal"));
        }
        _ => {}
    }
    Some(Value::Object(address))
}

/// XTN to ContactPoint: email (XTN-4) or number (XTN-12, XTN-1, or XTN-5/6/7/8).
fn contact_point(xtn: &Repetition, default_use: &str) -> Option<Value> {
    let equipment = comp(xtn, 3);
    let (system, value) = if matches!(equipment, "Internet" | "X.400") || comp(xtn, 2) == "NET" {
        let email = [comp(xtn, 4), comp(xtn, 1)]
            .into_iter()
            .find(|v| !v.is_empty())?;
        ("email", email.to_owned())
    } else {
        let number = [comp(xtn, 12), comp(xtn, 1)]
            .into_iter()
            .find(|v| !v.is_empty())
            .map(str::to_owned)
            .or_else(|| {
                let local = comp(xtn, 7);
                (!local.is_empty()).then(|| {
                    let mut n = String::new();
                    if !comp(xtn, 5).is_empty() {
                        n.push_str(&format!("+{} ", comp(xtn, 5)));
                    }
                    if !comp(xtn, 6).is_empty() {
                        n.push_str(&format!("({}) ", comp(xtn, 6)));
                    }
                    n.push_str(local);
                    if !comp(xtn, 8).is_empty() {
                        n.push_str(&format!(" ext. {}", comp(xtn, 8)));
                    }
                    n
                })
            })?;
        let system = match equipment {
            "FX" => "fax",
            "BP" => "pager",
            _ => "phone",
        };
        (system, number)
    };
    let contact_use = match (comp(xtn, 2), equipment) {
        (_, "CP") => "mobile",
        ("PRN", _) => "home",
        ("WPN", _) => "work",
        ("VHN", _) => "temp",
        _ => default_use,
    };
    Some(json!({"system": system, "value": value, "use": contact_use}))
}

fn is_oid(text: &str) -> bool {
    !text.is_empty()
        && text
            .split('.')
            .all(|arc| !arc.is_empty() && arc.chars().all(|c| c.is_ascii_digit()))
        && text.contains('.')
}

/// `text` usable inside a URN: letters, digits and `-._~` kept, the rest percent-encoded.
fn urn_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("unknown");
    }
    out
}

/// An HL7 DTM in FHIR forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateTimeValue {
    /// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`: the date part, at the precision sent.
    pub date: String,
    /// The FHIR dateTime: the date alone, or with time (seconds and offset added).
    pub date_time: String,
    /// A FHIR instant (to the second at least), when a time was sent.
    pub instant: Option<String>,
}

/// Parses an HL7 DTM/TS (`YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]`); a time without an
/// offset is in `zone`. `None` for anything else, or an impossible date.
pub fn date_time(text: &str, zone: &jiff::tz::TimeZone) -> Option<DateTimeValue> {
    let text = text.trim();
    // A TS may carry its precision as a second component (`^D`): the caller passed one.
    let (body, offset) = match text.find(['+', '-']) {
        Some(at) => (&text[..at], Some(&text[at..])),
        None => (text, None),
    };
    let (digits, fraction) = match body.split_once('.') {
        Some((digits, fraction)) => (digits, Some(fraction)),
        None => (body, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit())
        || !matches!(digits.len(), 4 | 6 | 8 | 10 | 12 | 14)
    {
        return None;
    }
    if let Some(fraction) = fraction
        && (digits.len() != 14
            || fraction.is_empty()
            || fraction.len() > 4
            || !fraction.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> i32 { digits[range].parse().unwrap_or(0) };
    let year = number(0..4);
    let month = if digits.len() >= 6 { number(4..6) } else { 1 };
    let day = if digits.len() >= 8 { number(6..8) } else { 1 };
    let date = jiff::civil::Date::new(year as i16, month as i8, day as i8).ok()?;
    if !(1000..=9999).contains(&year) {
        return None;
    }
    let date_text = match digits.len() {
        4 => format!("{year:04}"),
        6 => format!("{year:04}-{month:02}"),
        _ => format!("{year:04}-{month:02}-{day:02}"),
    };
    if digits.len() <= 8 {
        if offset.is_some() {
            // An offset on a date alone says nothing a FHIR date can keep.
            parse_offset(offset?)?;
        }
        return Some(DateTimeValue {
            date: date_text.clone(),
            date_time: date_text,
            instant: None,
        });
    }
    let hour = number(8..10);
    let minute = if digits.len() >= 12 {
        number(10..12)
    } else {
        0
    };
    let second = if digits.len() >= 14 {
        number(12..14)
    } else {
        0
    };
    let time = jiff::civil::Time::new(hour as i8, minute as i8, second as i8, 0).ok()?;
    let civil = date.to_datetime(time);
    let offset_seconds = match offset {
        Some(offset) => parse_offset(offset)?,
        None => zone
            .to_offset(
                zone.to_ambiguous_zoned(civil)
                    .compatible()
                    .ok()?
                    .timestamp(),
            )
            .seconds(),
    };
    let sign = if offset_seconds < 0 { '-' } else { '+' };
    let magnitude = offset_seconds.unsigned_abs();
    let offset_text = format!(
        "{sign}{:02}:{:02}",
        magnitude / 3600,
        (magnitude % 3600) / 60
    );
    let fraction_text = fraction.map(|f| format!(".{f}")).unwrap_or_default();
    let value =
        format!("{date_text}T{hour:02}:{minute:02}:{second:02}{fraction_text}{offset_text}");
    Some(DateTimeValue {
        date: date_text,
        date_time: value.clone(),
        instant: Some(value),
    })
}

/// `+HHMM` / `-HHMM` to seconds east of UTC.
fn parse_offset(text: &str) -> Option<i32> {
    let (sign, digits) = text.split_at(1);
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    if hours > 14 || minutes > 59 {
        return None;
    }
    let seconds = hours * 3600 + minutes * 60;
    Some(if sign == "-" { -seconds } else { seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paris() -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get("Europe/Paris").unwrap()
    }

    #[test]
    fn dates_keep_their_precision_and_get_an_offset() {
        let utc = jiff::tz::TimeZone::UTC;
        assert_eq!(date_time("1962", &utc).unwrap().date, "1962");
        assert_eq!(date_time("196203", &utc).unwrap().date, "1962-03");
        assert_eq!(date_time("19620315", &utc).unwrap().date_time, "1962-03-15");
        assert_eq!(
            date_time("202607011030", &paris()).unwrap().date_time,
            "2026-07-01T10:30:00+02:00"
        );
        assert_eq!(
            date_time("202601011030", &paris()).unwrap().date_time,
            "2026-01-01T10:30:00+01:00"
        );
        assert_eq!(
            date_time("20260101103000.25-0500", &paris())
                .unwrap()
                .date_time,
            "2026-01-01T10:30:00.25-05:00"
        );
        for bad in [
            "",
            "19621",
            "20260230",
            "2026131",
            "20261301",
            "2026010125",
            "202601011061",
            "abcd",
            "20260101+5",
            "2026-01-01",
            "20260101120000.12345",
            "20260101120000+1500",
        ] {
            assert_eq!(date_time(bad, &utc), None, "{bad:?}");
        }
    }

    #[test]
    fn coding_systems_map_to_uris() {
        assert_eq!(coding_system("LN"), "http://loinc.org");
        assert_eq!(
            coding_system("HL70078"),
            "http://terminology.hl7.org/CodeSystem/v2-0078"
        );
        assert_eq!(coding_system("99zzz"), "urn:hygie:hl7v2:codesystem:99zzz");
        assert_eq!(
            coding_system("my lab"),
            "urn:hygie:hl7v2:codesystem:my%20lab"
        );
    }

    #[test]
    fn decimals_are_read_as_hl7_writes_them() {
        for (text, json_text) in [
            ("7.25", "7.25"),
            (".5", "0.5"),
            ("-.5", "-0.5"),
            ("+3", "3"),
            ("12.", "12.0"),
        ] {
            assert_eq!(decimal(text).unwrap().to_string(), json_text, "{text}");
        }
        for bad in ["1e9", "inf", "NaN", "", "1,5", "abc"] {
            assert!(decimal(bad).is_none(), "{bad}");
        }
    }
}
