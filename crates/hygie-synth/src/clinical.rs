//! One patient's care at the hospital: encounters and what happened during them
//! (diagnoses, prescriptions, measurements), allergies and care teams.

use serde_json::{Value, json};

use crate::catalog::{
    ALLERGIES, AMBULATORY_DIAGNOSES, ATC, Allergy, CHRONIC_CONDITIONS, ChronicCondition,
    ChronicKind, Code, Diagnosis, EMERGENCY_DIAGNOSES, INPATIENT_DIAGNOSES, LOINC, Medication,
    SNOMED_CT,
};
use crate::fhir::{codeable_concept, coding, create_entry, hl7_concept, ucum_quantity};
use crate::hospital::{Department, Hospital, Ward};
use crate::observations::{Category, MEASUREMENT_ORDER, Physiology};
use crate::patient::PatientIdentity;
use crate::rng::SynthRng;
use crate::time::{
    DAY_SECONDS, EPOCH_UNIX_SECONDS, HOUR_SECONDS, MINUTE_SECONDS, UnixSeconds, YEAR_DAYS,
    fhir_date, fhir_date_time,
};

/// The demo hospital's visit numbers (one per encounter).
pub const VISIT_IDENTIFIER_SYSTEM: &str = "http://hospital.example.org/visit";

const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const PARTICIPATION_TYPE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const DIAGNOSIS_ROLE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/diagnosis-role";
const ADMIT_SOURCE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/admit-source";
const DISCHARGE_DISPOSITION_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/discharge-disposition";
const CONDITION_CLINICAL_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const CONDITION_VERIFICATION_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/condition-ver-status";
const CONDITION_CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
const MEDICATION_CATEGORY_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/medicationrequest-category";
const ALLERGY_CLINICAL_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
const ALLERGY_VERIFICATION_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";

/// Encounters are spread over the three years before the epoch.
const HISTORY_DAYS: i64 = 3 * YEAR_DAYS;
/// At most this many long-term conditions per patient, so records stay readable.
const CHRONIC_CONDITIONS_MAX: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EncounterClass {
    Ambulatory,
    Emergency,
    Inpatient,
}

impl EncounterClass {
    fn act_code(self) -> (&'static str, &'static str) {
        match self {
            Self::Ambulatory => ("AMB", "ambulatory"),
            Self::Emergency => ("EMER", "emergency"),
            Self::Inpatient => ("IMP", "inpatient encounter"),
        }
    }

    fn encounter_type(self) -> Code {
        match self {
            Self::Ambulatory => Code {
                code: "11429006",
                display: "Consultation (procedure)",
            },
            Self::Emergency => Code {
                code: "50849002",
                display: "Emergency room admission (procedure)",
            },
            Self::Inpatient => Code {
                code: "32485007",
                display: "Hospital admission (procedure)",
            },
        }
    }
}

/// Why the patient came: a new problem, or the follow-up of a known long-term one.
#[derive(Debug, Clone, Copy)]
enum Reason {
    NewProblem(Diagnosis),
    FollowUp { chronic_index: usize },
}

#[derive(Debug, Clone)]
struct EncounterPlan {
    full_url: String,
    class: EncounterClass,
    start: UnixSeconds,
    /// `None` while the encounter is still in progress at the epoch.
    end: Option<UnixSeconds>,
    ward: Ward,
    physician: usize,
    nurse: Option<usize>,
    reason: Reason,
}

impl EncounterPlan {
    /// The last instant something can have happened during this encounter.
    fn last_moment(&self) -> UnixSeconds {
        self.end.unwrap_or(EPOCH_UNIX_SECONDS - MINUTE_SECONDS)
    }

    /// The minute `numerator / denominator` of the way through the encounter (clinical
    /// systems record minutes; the start is a whole minute, so this is never before it).
    fn moment(&self, numerator: i64, denominator: i64) -> UnixSeconds {
        let at = self.start + (self.last_moment() - self.start) * numerator / denominator;
        at - at.rem_euclid(MINUTE_SECONDS)
    }

    fn period(&self) -> Value {
        let mut period = json!({"start": fhir_date_time(self.start)});
        if let Some(end) = self.end {
            period["end"] = Value::from(fhir_date_time(end));
        }
        period
    }
}

/// A long-term condition the patient already has when first seen.
struct ChronicRecord {
    condition: &'static ChronicCondition,
    full_url: String,
    onset: UnixSeconds,
}

/// The transaction entries of one patient's record, Patient first. `rng` continues the
/// stream `identity` was drawn from, so identities alone can be drawn without the record.
pub(crate) fn generate_patient(
    rng: &mut SynthRng,
    hospital: &Hospital,
    identity: &PatientIdentity,
    encounters_per_patient_max: usize,
    observations_per_encounter: usize,
) -> Vec<Value> {
    let patient = Patient { hospital, identity };
    let age_years = identity.age_years();
    let mut chronic = Vec::new();
    for condition in CHRONIC_CONDITIONS {
        let percent = match age_years {
            65.. => condition.percent_from_65,
            40..65 => condition.percent_from_65 / 3,
            _ => condition.percent_from_65 / 6,
        };
        if chronic.len() < CHRONIC_CONDITIONS_MAX && rng.chance(percent) {
            chronic.push(condition);
        }
    }
    let allergy_count = match rng.below(100) {
        0..70 => 0,
        70..92 => 1,
        _ => 2,
    };
    let mut allergies: Vec<&'static Allergy> = Vec::new();
    while allergies.len() < allergy_count {
        let allergy = rng.pick(ALLERGIES);
        if !allergies.iter().any(|known| std::ptr::eq(*known, allergy)) {
            allergies.push(allergy);
        }
    }
    let allergic_to_penicillin = allergies.iter().any(|allergy| allergy.is_penicillin);
    let chronic_kinds: Vec<ChronicKind> = chronic.iter().map(|c| c.kind).collect();
    let physiology = Physiology::draw(rng, identity.gender(), &chronic_kinds);
    let encounters = plan_encounters(rng, hospital, &chronic_kinds, encounters_per_patient_max);
    let first = &encounters[0];

    let chronic: Vec<ChronicRecord> = chronic
        .into_iter()
        .map(|condition| {
            // Diagnosed at 16 at the earliest, at least a year before the patient came here.
            let age_at_first_visit = (first.start - identity.birth) / (YEAR_DAYS * DAY_SECONDS);
            let years_before = rng.between(1, (age_at_first_visit - 16).clamp(1, 15));
            let onset = first.start - years_before * YEAR_DAYS * DAY_SECONDS;
            ChronicRecord {
                condition,
                full_url: rng.urn_uuid(),
                onset,
            }
        })
        .collect();

    let mut entries = Vec::with_capacity(
        1 + 2 * chronic.len()
            + allergies.len()
            + encounters.len() * (3 + observations_per_encounter)
            + 2,
    );
    entries.push(create_entry(
        &identity.full_url,
        identity.resource(hospital),
        None,
    ));
    for record in &chronic {
        entries.push(patient.chronic_condition(rng, record, first));
        entries.push(patient.prescription(
            rng,
            first,
            record.condition.diagnosis.treatment,
            &record.full_url,
            record.condition.diagnosis.snomed.display,
        ));
    }
    for allergy in &allergies {
        entries.push(patient.allergy(rng, allergy, first));
    }
    for (encounter_number, encounter) in encounters.iter().enumerate() {
        let mut new_problem_url = None;
        let (reason_url, reason_display) = match encounter.reason {
            Reason::NewProblem(diagnosis) => (
                new_problem_url.insert(rng.urn_uuid()).clone(),
                diagnosis.snomed.display,
            ),
            Reason::FollowUp { chronic_index } => {
                let known = &chronic[chronic_index];
                (
                    known.full_url.clone(),
                    known.condition.diagnosis.snomed.display,
                )
            }
        };
        entries.push(patient.encounter(encounter, encounter_number, &reason_url, reason_display));
        let mut infection = false;
        if let (Reason::NewProblem(diagnosis), Some(condition_url)) =
            (encounter.reason, &new_problem_url)
        {
            infection = diagnosis.is_infection;
            let treatment = match diagnosis.penicillin_free_treatment {
                Some(alternative)
                    if allergic_to_penicillin && diagnosis.treatment.is_penicillin =>
                {
                    alternative
                }
                _ => diagnosis.treatment,
            };
            // Diagnosed in the first half of the encounter, treated in the second.
            let authored = encounter.moment(rng.between(60, 90), 100);
            entries.push(patient.new_problem(
                rng,
                encounter,
                &diagnosis,
                treatment,
                condition_url,
                authored,
            ));
            entries.push(patient.prescription_at(
                rng,
                encounter,
                treatment,
                condition_url,
                diagnosis.snomed.display,
                authored,
            ));
        }
        let count = observations_per_encounter as i64;
        for (position, measurement) in MEASUREMENT_ORDER
            .iter()
            .cycle()
            .take(observations_per_encounter)
            .enumerate()
        {
            let effective = encounter.moment(position as i64 + 1, count + 1);
            let observed = physiology.observe(rng, *measurement, infection);
            entries.push(patient.observation(
                rng,
                encounter,
                measurement.category(),
                observed,
                effective,
            ));
        }
    }
    if let Some(stay) = encounters
        .iter()
        .rev()
        .find(|e| e.class == EncounterClass::Inpatient)
    {
        entries.push(patient.inpatient_care_team(rng, stay));
    } else if chronic.len() >= 2 {
        entries.push(patient.long_term_care_team(rng, first));
    }
    entries
}

/// Picks when, where and why the patient came, oldest first, never overlapping.
fn plan_encounters(
    rng: &mut SynthRng,
    hospital: &Hospital,
    chronic: &[ChronicKind],
    encounters_per_patient_max: usize,
) -> Vec<EncounterPlan> {
    let count = rng.between(1, encounters_per_patient_max as i64);
    // Each encounter starts in the first half of its own slot of the history and lasts at
    // most 13 days, shorter than half a slot (the count is bounded), so none overlap.
    let slot_days = HISTORY_DAYS / count;
    let history_start = EPOCH_UNIX_SECONDS - HISTORY_DAYS * DAY_SECONDS;
    let physicians_at = |ward: Ward| hospital.staff_where(|m| m.is_physician() && m.ward == ward);
    let nurse_at = |ward: Ward| {
        hospital
            .staff_where(|m| !m.is_physician() && m.ward == ward)
            .first()
            .copied()
    };
    let medicine_physicians = hospital
        .staff_where(|m| m.is_physician() && m.ward.department() == Department::InternalMedicine);
    (0..count)
        .map(|slot| {
            let class = match rng.below(100) {
                0..45 => EncounterClass::Ambulatory,
                45..75 => EncounterClass::Emergency,
                _ => EncounterClass::Inpatient,
            };
            let in_progress =
                slot == count - 1 && class != EncounterClass::Ambulatory && rng.chance(25);
            let (start, duration) = if in_progress {
                let started_ago = match class {
                    EncounterClass::Inpatient => rng.between(6 * HOUR_SECONDS, 4 * DAY_SECONDS),
                    _ => rng.between(HOUR_SECONDS, 7 * HOUR_SECONDS),
                };
                let whole_minutes_ago = started_ago - started_ago % MINUTE_SECONDS;
                (EPOCH_UNIX_SECONDS - whole_minutes_ago, None)
            } else {
                let day =
                    history_start / DAY_SECONDS + slot * slot_days + rng.between(0, slot_days / 2);
                let (time_of_day, duration) = match class {
                    EncounterClass::Ambulatory => (
                        rng.between(8 * 12, 16 * 12) * 5 * MINUTE_SECONDS,
                        rng.between(4, 9) * 5 * MINUTE_SECONDS,
                    ),
                    EncounterClass::Emergency => (
                        rng.between(0, DAY_SECONDS - 1) / 60 * 60,
                        rng.between(2 * HOUR_SECONDS, 9 * HOUR_SECONDS) / 60 * 60,
                    ),
                    EncounterClass::Inpatient => (
                        rng.between(7 * 60, 20 * 60) * MINUTE_SECONDS,
                        rng.between(2 * DAY_SECONDS, 12 * DAY_SECONDS) / 60 * 60,
                    ),
                };
                (day * DAY_SECONDS + time_of_day, Some(duration))
            };
            let (ward, physician, nurse) = match class {
                EncounterClass::Ambulatory => (
                    Ward::OutpatientClinic,
                    *rng.pick(&medicine_physicians),
                    None,
                ),
                EncounterClass::Emergency => {
                    let ward = Ward::EmergencyCare;
                    (ward, *rng.pick(&physicians_at(ward)), nurse_at(ward))
                }
                EncounterClass::Inpatient => {
                    let ward = *rng.pick(&Ward::INPATIENT);
                    (ward, *rng.pick(&physicians_at(ward)), nurse_at(ward))
                }
            };
            let reason = match class {
                EncounterClass::Ambulatory if !chronic.is_empty() && rng.chance(60) => {
                    Reason::FollowUp {
                        chronic_index: rng.below(chronic.len() as u64) as usize,
                    }
                }
                EncounterClass::Ambulatory => Reason::NewProblem(*rng.pick(AMBULATORY_DIAGNOSES)),
                EncounterClass::Emergency => Reason::NewProblem(*rng.pick(EMERGENCY_DIAGNOSES)),
                EncounterClass::Inpatient => {
                    let decompensating = chronic
                        .iter()
                        .position(|&k| k == ChronicKind::HeartFailure || k == ChronicKind::Copd);
                    match decompensating {
                        Some(chronic_index) if rng.chance(40) => Reason::FollowUp { chronic_index },
                        _ => Reason::NewProblem(*rng.pick(INPATIENT_DIAGNOSES)),
                    }
                }
            };
            EncounterPlan {
                full_url: rng.urn_uuid(),
                class,
                start,
                end: duration.map(|duration| start + duration),
                ward,
                physician,
                nurse,
                reason,
            }
        })
        .collect()
}

/// Builds the resources of one patient, all referring to the patient and the hospital.
struct Patient<'a> {
    hospital: &'a Hospital,
    identity: &'a PatientIdentity,
}

impl Patient<'_> {
    fn encounter(
        &self,
        encounter: &EncounterPlan,
        encounter_number: usize,
        reason_url: &str,
        reason_display: &str,
    ) -> Value {
        let (class_code, class_display) = encounter.class.act_code();
        let mut resource = json!({
            "resourceType": "Encounter",
            "identifier": [{
                "use": "official",
                "system": VISIT_IDENTIFIER_SYSTEM,
                "value": format!("{}-{}", self.identity.mrn, encounter_number + 1),
            }],
            "status": if encounter.end.is_some() { "finished" } else { "in-progress" },
            "class": {"system": ACT_CODE_SYSTEM, "code": class_code, "display": class_display},
            "type": [codeable_concept(SNOMED_CT, encounter.class.encounter_type())],
            "subject": self.identity.reference(),
            "participant": [{
                "type": [hl7_concept(PARTICIPATION_TYPE_SYSTEM, "ATND", "attender")],
                "individual": self.hospital.staff_reference(encounter.physician),
            }],
            "period": encounter.period(),
            "reasonReference": [{"reference": reason_url, "display": reason_display}],
        });
        if let Reason::NewProblem(_) = encounter.reason
            && encounter.class != EncounterClass::Ambulatory
        {
            let (role, role_display) = if encounter.end.is_some() {
                ("DD", "Discharge diagnosis")
            } else {
                ("AD", "Admission diagnosis")
            };
            resource["diagnosis"] = json!([{
                "condition": {"reference": reason_url, "display": reason_display},
                "use": hl7_concept(DIAGNOSIS_ROLE_SYSTEM, role, role_display),
                "rank": 1,
            }]);
        }
        if encounter.class == EncounterClass::Inpatient {
            let mut hospitalization = json!({
                "admitSource": hl7_concept(ADMIT_SOURCE_SYSTEM, "emd", "From accident/emergency department"),
            });
            if encounter.end.is_some() {
                hospitalization["dischargeDisposition"] =
                    hl7_concept(DISCHARGE_DISPOSITION_SYSTEM, "home", "Home");
            }
            resource["hospitalization"] = hospitalization;
        }
        resource["location"] = json!([{
            "location": self.hospital.ward_reference(encounter.ward),
            "status": if encounter.end.is_some() { "completed" } else { "active" },
            "period": encounter.period(),
        }]);
        resource["serviceProvider"] = self
            .hospital
            .department_reference(encounter.ward.department());
        create_entry(&encounter.full_url, resource, None)
    }

    fn chronic_condition(
        &self,
        rng: &mut SynthRng,
        record: &ChronicRecord,
        first: &EncounterPlan,
    ) -> Value {
        let resource = json!({
            "resourceType": "Condition",
            "clinicalStatus": hl7_concept(CONDITION_CLINICAL_SYSTEM, "active", "Active"),
            "verificationStatus": hl7_concept(CONDITION_VERIFICATION_SYSTEM, "confirmed", "Confirmed"),
            "category": [hl7_concept(CONDITION_CATEGORY_SYSTEM, "problem-list-item", "Problem List Item")],
            "code": codeable_concept(SNOMED_CT, record.condition.diagnosis.snomed),
            "subject": self.identity.reference(),
            "encounter": {"reference": first.full_url},
            // Known to the month only: the patient reports it, no record exists.
            "onsetDateTime": fhir_date(record.onset)[..7],
            "recordedDate": fhir_date_time(first.moment(rng.between(1, 20), 100)),
            "recorder": self.hospital.staff_reference(first.physician),
        });
        create_entry(&record.full_url, resource, None)
    }

    fn new_problem(
        &self,
        rng: &mut SynthRng,
        encounter: &EncounterPlan,
        diagnosis: &Diagnosis,
        treatment: Medication,
        condition_url: &str,
        prescribed: UnixSeconds,
    ) -> Value {
        let onset = encounter.start - rng.between(2 * HOUR_SECONDS, 3 * DAY_SECONDS) / 60 * 60;
        let mut resource = json!({
            "resourceType": "Condition",
            "clinicalStatus": hl7_concept(CONDITION_CLINICAL_SYSTEM, "active", "Active"),
            "verificationStatus": hl7_concept(CONDITION_VERIFICATION_SYSTEM, "confirmed", "Confirmed"),
            "category": [hl7_concept(CONDITION_CATEGORY_SYSTEM, "encounter-diagnosis", "Encounter Diagnosis")],
            "code": codeable_concept(SNOMED_CT, diagnosis.snomed),
            "subject": self.identity.reference(),
            "encounter": {"reference": encounter.full_url},
            "onsetDateTime": fhir_date_time(onset),
            "recordedDate": fhir_date_time(encounter.moment(rng.between(10, 50), 100)),
            "recorder": self.hospital.staff_reference(encounter.physician),
        });
        // A problem treated by a finished course is over; one that needs a long-term
        // treatment (after an infarction, a stroke) stays on the record as active.
        if let Some(resolved) = course_end(encounter, treatment, prescribed) {
            resource["clinicalStatus"] =
                hl7_concept(CONDITION_CLINICAL_SYSTEM, "resolved", "Resolved");
            resource["abatementDateTime"] = Value::from(fhir_date_time(resolved));
        }
        create_entry(condition_url, resource, None)
    }

    fn prescription(
        &self,
        rng: &mut SynthRng,
        encounter: &EncounterPlan,
        medication: Medication,
        condition_url: &str,
        condition_display: &str,
    ) -> Value {
        let authored = encounter.moment(rng.between(20, 40), 100);
        self.prescription_at(
            rng,
            encounter,
            medication,
            condition_url,
            condition_display,
            authored,
        )
    }

    fn prescription_at(
        &self,
        rng: &mut SynthRng,
        encounter: &EncounterPlan,
        medication: Medication,
        condition_url: &str,
        condition_display: &str,
        authored: UnixSeconds,
    ) -> Value {
        let (category, category_display) =
            match (medication.course_days, encounter.class, encounter.end) {
                (Some(_), EncounterClass::Inpatient, None) => ("inpatient", "Inpatient"),
                (Some(_), EncounterClass::Inpatient, Some(_)) => ("discharge", "Discharge"),
                _ => ("community", "Community"),
            };
        let mut repeat =
            json!({"frequency": medication.doses_per_day, "period": 1, "periodUnit": "d"});
        if let Some(days) = medication.course_days {
            repeat["boundsDuration"] = ucum_quantity(Value::from(days), "days", "d");
        }
        let status = if course_end(encounter, medication, authored).is_some() {
            "completed"
        } else {
            "active"
        };
        let resource = json!({
            "resourceType": "MedicationRequest",
            "status": status,
            "intent": "order",
            "category": [hl7_concept(MEDICATION_CATEGORY_SYSTEM, category, category_display)],
            "medicationCodeableConcept": {
                "coding": [coding(ATC, medication.atc)],
                "text": medication.product,
            },
            "subject": self.identity.reference(),
            "encounter": {"reference": encounter.full_url},
            "authoredOn": fhir_date_time(authored),
            "requester": self.hospital.staff_reference(encounter.physician),
            "reasonReference": [{"reference": condition_url, "display": condition_display}],
            "dosageInstruction": [{
                "sequence": 1,
                "text": medication.dosage_text,
                "timing": {"repeat": repeat},
            }],
        });
        create_entry(&rng.urn_uuid(), resource, None)
    }

    fn allergy(&self, rng: &mut SynthRng, allergy: &Allergy, first: &EncounterPlan) -> Value {
        let manifestation = *rng.pick(allergy.reactions);
        let (severity, criticality) = if manifestation.code == "39579001" {
            ("severe", "high")
        } else if rng.chance(50) {
            ("mild", "low")
        } else {
            ("moderate", "low")
        };
        let resource = json!({
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": hl7_concept(ALLERGY_CLINICAL_SYSTEM, "active", "Active"),
            "verificationStatus": hl7_concept(ALLERGY_VERIFICATION_SYSTEM, "confirmed", "Confirmed"),
            "type": "allergy",
            "category": [allergy.category.fhir_code()],
            "criticality": criticality,
            "code": codeable_concept(SNOMED_CT, allergy.snomed),
            "patient": self.identity.reference(),
            "encounter": {"reference": first.full_url},
            "recordedDate": fhir_date_time(first.moment(rng.between(1, 20), 100)),
            "recorder": self.hospital.staff_reference(first.physician),
            "reaction": [{
                "manifestation": [codeable_concept(SNOMED_CT, manifestation)],
                "severity": severity,
            }],
        });
        create_entry(&rng.urn_uuid(), resource, None)
    }

    fn observation(
        &self,
        rng: &mut SynthRng,
        encounter: &EncounterPlan,
        category: Category,
        observed: Value,
        effective: UnixSeconds,
    ) -> Value {
        let mut resource = json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [category.concept()],
        });
        let performer = match category {
            // Nurses take the vital signs where there is one; the hospital's laboratory
            // reports the results, about an hour after the sample.
            Category::VitalSigns => self
                .hospital
                .staff_reference(encounter.nurse.unwrap_or(encounter.physician)),
            Category::Laboratory => self.hospital.organization_reference(),
        };
        let Value::Object(observed) = observed else {
            unreachable!("an observed measurement is a JSON object")
        };
        let code = observed
            .get("code")
            .cloned()
            .expect("every measurement has a code");
        resource["code"] = code;
        resource["subject"] = self.identity.reference();
        resource["encounter"] = json!({"reference": encounter.full_url});
        resource["effectiveDateTime"] = Value::from(fhir_date_time(effective));
        if category == Category::Laboratory {
            let issued =
                (effective + rng.between(45, 150) * MINUTE_SECONDS).min(EPOCH_UNIX_SECONDS);
            resource["issued"] = Value::from(fhir_date_time(issued));
        }
        resource["performer"] = json!([performer]);
        for (key, value) in observed {
            if key != "code" {
                resource[key] = value;
            }
        }
        create_entry(&rng.urn_uuid(), resource, None)
    }

    fn inpatient_care_team(&self, rng: &mut SynthRng, stay: &EncounterPlan) -> Value {
        let department = stay.ward.department();
        let mut participants = vec![self.care_team_member(
            stay.physician,
            "158965000",
            "Medical practitioner (occupation)",
            department,
        )];
        if let Some(nurse) = stay.nurse {
            participants.push(self.care_team_member(
                nurse,
                "224535009",
                "Registered nurse (occupation)",
                department,
            ));
        }
        let resource = json!({
            "resourceType": "CareTeam",
            "status": if stay.end.is_some() { "inactive" } else { "active" },
            "category": [{"coding": [{"system": LOINC, "code": "LA27976-2", "display": "Encounter-focused care team"}]}],
            "name": format!("Équipe de soins – {}", stay.ward.name()),
            "subject": self.identity.reference(),
            "encounter": {"reference": stay.full_url},
            "period": stay.period(),
            "participant": participants,
            "managingOrganization": [self.hospital.department_reference(department)],
        });
        create_entry(&rng.urn_uuid(), resource, None)
    }

    fn long_term_care_team(&self, rng: &mut SynthRng, first: &EncounterPlan) -> Value {
        let department = Department::InternalMedicine;
        let participants: Vec<Value> = self
            .hospital
            .staff_where(|m| m.is_physician() && m.ward.department() == department)
            .into_iter()
            .take(2)
            .map(|physician| {
                self.care_team_member(
                    physician,
                    "158965000",
                    "Medical practitioner (occupation)",
                    department,
                )
            })
            .collect();
        let resource = json!({
            "resourceType": "CareTeam",
            "status": "active",
            "category": [{"coding": [{"system": LOINC, "code": "LA28865-6", "display": "Longitudinal care-coordination focused care team"}]}],
            "name": format!("Suivi au long cours – {}", self.identity.display_name()),
            "subject": self.identity.reference(),
            "period": {"start": fhir_date_time(first.start)},
            "participant": participants,
            "managingOrganization": [self.hospital.department_reference(department)],
        });
        create_entry(&rng.urn_uuid(), resource, None)
    }

    fn care_team_member(
        &self,
        staff_index: usize,
        role_code: &'static str,
        role_display: &'static str,
        department: Department,
    ) -> Value {
        json!({
            "role": [codeable_concept(SNOMED_CT, Code { code: role_code, display: role_display })],
            "member": self.hospital.staff_reference(staff_index),
            "onBehalfOf": self.hospital.department_reference(department),
        })
    }
}

/// When a treatment course prescribed at `prescribed` ended, if it ended before the epoch
/// after a finished encounter; `None` for long-term treatments and running courses.
fn course_end(
    encounter: &EncounterPlan,
    medication: Medication,
    prescribed: UnixSeconds,
) -> Option<UnixSeconds> {
    let days = i64::from(medication.course_days?);
    encounter.end?;
    let end = prescribed.max(encounter.last_moment()) + days * DAY_SECONDS;
    (end <= EPOCH_UNIX_SECONDS).then_some(end)
}
