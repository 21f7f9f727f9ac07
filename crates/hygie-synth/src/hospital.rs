//! The hospital every generated patient is cared for in: the organization, its two
//! departments, four locations and eight staff members with their roles.

use serde_json::{Value, json};

use crate::catalog::{Code, SNOMED_CT};
use crate::fhir::{codeable_concept, create_entry, hl7_concept, identifier_query, reference};
use crate::people::{PersonName, ascii_slug, luhn_check_digit};
use crate::rng::SynthRng;

/// France's national health-professional identifier (IDNPS): `8` followed by the RPPS number.
pub const PRACTITIONER_IDENTIFIER_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.1";
/// France's national healthcare-structure identifier (IDNST): `1` followed by the FINESS number.
pub const ORGANIZATION_IDENTIFIER_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.2";
/// The demo hospital's own identifiers for its departments, locations and staff roles.
pub const HOSPITAL_LOCAL_IDENTIFIER_SYSTEM: &str = "http://hospital.example.org/id";

const ORGANIZATION_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/organization-type";
const LOCATION_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/location-physical-type";
const ROLE_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/practitioner-role";
const IDENTIFIER_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

const HOSPITAL_NAME: &str = "Centre hospitalier Hygie (démonstration)";
/// A FINESS number outside the allocated ranges (département 99 holds no hospital).
const HOSPITAL_FINESS: &str = "990000019";
const HOSPITAL_EMAIL_DOMAIN: &str = "hospital.example.org";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Department {
    InternalMedicine,
    Emergency,
}

impl Department {
    pub(crate) const ALL: [Self; 2] = [Self::InternalMedicine, Self::Emergency];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::InternalMedicine => "Service de médecine interne",
            Self::Emergency => "Service des urgences",
        }
    }

    fn local_id(self) -> &'static str {
        match self {
            Self::InternalMedicine => "dept-medecine-interne",
            Self::Emergency => "dept-urgences",
        }
    }
}

/// Where patients are seen: each belongs to one department.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ward {
    MedicineUnitA,
    MedicineUnitB,
    EmergencyCare,
    OutpatientClinic,
}

impl Ward {
    pub(crate) const ALL: [Self; 4] = [
        Self::MedicineUnitA,
        Self::MedicineUnitB,
        Self::EmergencyCare,
        Self::OutpatientClinic,
    ];
    /// The wards that take inpatients.
    pub(crate) const INPATIENT: [Self; 2] = [Self::MedicineUnitA, Self::MedicineUnitB];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::MedicineUnitA => "Médecine interne – unité A",
            Self::MedicineUnitB => "Médecine interne – unité B",
            Self::EmergencyCare => "Urgences – zone de soins",
            Self::OutpatientClinic => "Consultations externes de médecine",
        }
    }

    pub(crate) fn department(self) -> Department {
        match self {
            Self::EmergencyCare => Department::Emergency,
            _ => Department::InternalMedicine,
        }
    }

    fn local_id(self) -> &'static str {
        match self {
            Self::MedicineUnitA => "loc-medecine-a",
            Self::MedicineUnitB => "loc-medecine-b",
            Self::EmergencyCare => "loc-urgences",
            Self::OutpatientClinic => "loc-consultations",
        }
    }

    /// Location physical type: inpatient units are wards, the others areas.
    fn physical_type(self) -> (&'static str, &'static str) {
        match self {
            Self::MedicineUnitA | Self::MedicineUnitB => ("wa", "Ward"),
            Self::EmergencyCare | Self::OutpatientClinic => ("area", "Area"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profession {
    Physician { specialty: Code },
    Nurse,
}

/// The fixed staffing plan; names and numbers are drawn per seed.
const STAFFING: [(Profession, Ward); 8] = [
    (
        physician("394802001", "General medicine"),
        Ward::MedicineUnitA,
    ),
    (physician("394579002", "Cardiology"), Ward::OutpatientClinic),
    (physician("394591006", "Neurology"), Ward::MedicineUnitB),
    (
        physician("773568002", "Emergency medicine"),
        Ward::EmergencyCare,
    ),
    (
        physician("773568002", "Emergency medicine"),
        Ward::EmergencyCare,
    ),
    (Profession::Nurse, Ward::MedicineUnitA),
    (Profession::Nurse, Ward::MedicineUnitB),
    (Profession::Nurse, Ward::EmergencyCare),
];

const fn physician(code: &'static str, display: &'static str) -> Profession {
    Profession::Physician {
        specialty: Code { code, display },
    }
}

#[derive(Debug, Clone)]
pub(crate) struct StaffMember {
    pub(crate) practitioner_url: String,
    pub(crate) role_url: String,
    pub(crate) name: PersonName,
    pub(crate) profession: Profession,
    pub(crate) ward: Ward,
    /// The IDNPS: `8` + RPPS number.
    pub(crate) national_id: String,
}

impl StaffMember {
    pub(crate) fn is_physician(&self) -> bool {
        matches!(self.profession, Profession::Physician { .. })
    }

    pub(crate) fn display_name(&self) -> String {
        let name = self.name.display(self.name.family);
        if self.is_physician() {
            format!("Dr {name}")
        } else {
            name
        }
    }

    pub(crate) fn description(&self) -> String {
        let what = match self.profession {
            Profession::Physician { specialty } => format!("physician, {}", specialty.display),
            Profession::Nurse => "nurse".to_owned(),
        };
        format!("{what} – {}", self.ward.name())
    }
}

/// The generated hospital: every patient's data refers to these entries.
#[derive(Debug, Clone)]
pub(crate) struct Hospital {
    pub(crate) organization_url: String,
    department_urls: [String; 2],
    ward_urls: [String; 4],
    pub(crate) staff: Vec<StaffMember>,
    /// First medical-record number of this seed; patient `n` gets `mrn_base + n`.
    pub(crate) mrn_base: u64,
}

impl Hospital {
    pub(crate) fn generate(rng: &mut SynthRng) -> Self {
        let organization_url = rng.urn_uuid();
        let department_urls = [rng.urn_uuid(), rng.urn_uuid()];
        let ward_urls = [
            rng.urn_uuid(),
            rng.urn_uuid(),
            rng.urn_uuid(),
            rng.urn_uuid(),
        ];
        // Consecutive six-digit serials keep the staff's RPPS numbers distinct; the `1099`
        // prefix is above every RPPS number allocated so far, so none is a real person's.
        let serial_base = rng.below(1_000_000 - STAFFING.len() as u64);
        let staff = STAFFING
            .iter()
            .enumerate()
            .map(|(index, &(profession, ward))| {
                let rpps_body = format!("1099{:06}", serial_base + index as u64);
                let rpps = format!("{rpps_body}{}", luhn_check_digit(&rpps_body));
                StaffMember {
                    practitioner_url: rng.urn_uuid(),
                    role_url: rng.urn_uuid(),
                    name: PersonName::draw(rng),
                    profession,
                    ward,
                    national_id: format!("8{rpps}"),
                }
            })
            .collect();
        let mrn_base = 10_000_000 + rng.below(80_000_000);
        Self {
            organization_url,
            department_urls,
            ward_urls,
            staff,
            mrn_base,
        }
    }

    pub(crate) fn department_url(&self, department: Department) -> &str {
        &self.department_urls[Department::ALL
            .iter()
            .position(|&d| d == department)
            .unwrap()]
    }

    pub(crate) fn ward_url(&self, ward: Ward) -> &str {
        &self.ward_urls[Ward::ALL.iter().position(|&w| w == ward).unwrap()]
    }

    pub(crate) fn organization_reference(&self) -> Value {
        reference(&self.organization_url, HOSPITAL_NAME)
    }

    pub(crate) fn department_reference(&self, department: Department) -> Value {
        reference(self.department_url(department), department.name())
    }

    pub(crate) fn ward_reference(&self, ward: Ward) -> Value {
        reference(self.ward_url(ward), ward.name())
    }

    pub(crate) fn staff_reference(&self, staff_index: usize) -> Value {
        let member = &self.staff[staff_index];
        reference(&member.practitioner_url, &member.display_name())
    }

    /// Indices of the staff members matching `wanted`, in staffing order.
    pub(crate) fn staff_where(&self, wanted: impl Fn(&StaffMember) -> bool) -> Vec<usize> {
        (0..self.staff.len())
            .filter(|&index| wanted(&self.staff[index]))
            .collect()
    }

    /// The transaction entries of the hospital itself, in dependency order. With
    /// `conditional`, each carries an `ifNoneExist` on its identifier so that many bundles
    /// can bring the same hospital without duplicating it.
    pub(crate) fn entries(&self, conditional: bool) -> Vec<Value> {
        let entry = |full_url: &str, resource: Value, system: &str, value: &str| {
            let query = conditional.then(|| identifier_query(system, value));
            create_entry(full_url, resource, query.as_deref())
        };
        let mut entries = Vec::with_capacity(3 + 4 + 2 * self.staff.len());
        let hospital_id = format!("1{HOSPITAL_FINESS}");
        entries.push(entry(
            &self.organization_url,
            json!({
                "resourceType": "Organization",
                "identifier": [{
                    "use": "official",
                    "system": ORGANIZATION_IDENTIFIER_SYSTEM,
                    "value": hospital_id,
                }],
                "active": true,
                "type": [hl7_concept(ORGANIZATION_TYPE_SYSTEM, "prov", "Healthcare Provider")],
                "name": HOSPITAL_NAME,
                "alias": ["CH Hygie"],
                "telecom": [{"system": "phone", "value": "+33 1 99 00 00 00", "use": "work"}],
                "address": [{
                    "use": "work",
                    "line": ["1 place de l'Hôpital"],
                    "city": "Paris",
                    "postalCode": "75013",
                    "country": "FR",
                }],
            }),
            ORGANIZATION_IDENTIFIER_SYSTEM,
            &hospital_id,
        ));
        for department in Department::ALL {
            entries.push(entry(
                self.department_url(department),
                json!({
                    "resourceType": "Organization",
                    "identifier": [{
                        "system": HOSPITAL_LOCAL_IDENTIFIER_SYSTEM,
                        "value": department.local_id(),
                    }],
                    "active": true,
                    "type": [hl7_concept(ORGANIZATION_TYPE_SYSTEM, "dept", "Hospital Department")],
                    "name": department.name(),
                    "partOf": self.organization_reference(),
                }),
                HOSPITAL_LOCAL_IDENTIFIER_SYSTEM,
                department.local_id(),
            ));
        }
        for ward in Ward::ALL {
            let (type_code, type_display) = ward.physical_type();
            entries.push(entry(
                self.ward_url(ward),
                json!({
                    "resourceType": "Location",
                    "identifier": [{
                        "system": HOSPITAL_LOCAL_IDENTIFIER_SYSTEM,
                        "value": ward.local_id(),
                    }],
                    "status": "active",
                    "name": ward.name(),
                    "mode": "instance",
                    "physicalType": hl7_concept(LOCATION_TYPE_SYSTEM, type_code, type_display),
                    "managingOrganization": self.department_reference(ward.department()),
                }),
                HOSPITAL_LOCAL_IDENTIFIER_SYSTEM,
                ward.local_id(),
            ));
        }
        for (index, member) in self.staff.iter().enumerate() {
            entries.push(entry(
                &member.practitioner_url,
                self.practitioner_resource(member),
                PRACTITIONER_IDENTIFIER_SYSTEM,
                &member.national_id,
            ));
            let role_id = format!("role-{}", member.national_id);
            entries.push(entry(
                &member.role_url,
                self.role_resource(index, &role_id),
                HOSPITAL_LOCAL_IDENTIFIER_SYSTEM,
                &role_id,
            ));
        }
        entries
    }

    fn practitioner_resource(&self, member: &StaffMember) -> Value {
        let name = &member.name;
        let mut human_name = json!({"use": "official", "family": name.family, "given": name.given});
        if member.is_physician() {
            human_name["prefix"] = json!(["Dr"]);
        }
        let email = format!(
            "{}.{}@{HOSPITAL_EMAIL_DOMAIN}",
            ascii_slug(name.given[0]),
            ascii_slug(name.family)
        );
        // Phone digits come from the practitioner's number so the resource stays a pure
        // function of the staff member (no extra draws from the generator).
        let extension = &member.national_id[member.national_id.len() - 4..];
        json!({
            "resourceType": "Practitioner",
            "identifier": [{
                "use": "official",
                "type": hl7_concept(IDENTIFIER_TYPE_SYSTEM, "PRN", "Provider number"),
                "system": PRACTITIONER_IDENTIFIER_SYSTEM,
                "value": member.national_id,
            }],
            "active": true,
            "name": [human_name],
            "telecom": [
                {"system": "email", "value": email, "use": "work"},
                {"system": "phone", "value": format!("+33 1 99 00 {} {}", &extension[..2], &extension[2..]), "use": "work"},
            ],
            "gender": name.gender.fhir_code(),
            "communication": [{
                "coding": [{"system": "urn:ietf:bcp:47", "code": "fr", "display": "French"}],
            }],
        })
    }

    fn role_resource(&self, staff_index: usize, role_id: &str) -> Value {
        let member = &self.staff[staff_index];
        let mut role = json!({
            "resourceType": "PractitionerRole",
            "identifier": [{"system": HOSPITAL_LOCAL_IDENTIFIER_SYSTEM, "value": role_id}],
            "active": true,
            "practitioner": self.staff_reference(staff_index),
            "organization": self.department_reference(member.ward.department()),
        });
        match member.profession {
            Profession::Physician { specialty } => {
                role["code"] = json!([hl7_concept(ROLE_CODE_SYSTEM, "doctor", "Doctor")]);
                role["specialty"] = json!([codeable_concept(SNOMED_CT, specialty)]);
            }
            Profession::Nurse => {
                role["code"] = json!([hl7_concept(ROLE_CODE_SYSTEM, "nurse", "Nurse")]);
            }
        }
        role["location"] = json!([self.ward_reference(member.ward)]);
        role
    }
}
