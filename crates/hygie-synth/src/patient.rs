//! Who a generated patient is: name, sex, birth, identifiers, contact details.

use serde_json::{Value, json};

use crate::catalog::{COMMUNES, Commune, STREETS};
use crate::fhir::hl7_concept;
use crate::hospital::Hospital;
use crate::people::{Gender, PersonName, ascii_slug, fictional_phone, nir_key};
use crate::rng::SynthRng;
use crate::time::{DAY_SECONDS, EPOCH_UNIX_SECONDS, UnixSeconds, fhir_date};

/// The demo hospital's medical-record numbers (IPP, identifiant permanent du patient).
pub const MRN_SYSTEM: &str = "http://hospital.example.org/mrn";
/// France's national health identifier (INS-NIR) *test* namespace: numbers in it are known to
/// be fictitious, so generated NIRs can never be mistaken for a real person's.
pub const INS_NIR_TEST_SYSTEM: &str = "urn:oid:1.2.250.1.213.1.4.10";

const MARITAL_STATUS_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus";
const IDENTIFIER_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
/// Days in 100 years, for turning ages into birth dates.
const CENTURY_DAYS: i64 = 36_525;

#[derive(Debug, Clone, Copy)]
enum MaritalStatus {
    Single,
    Married,
    Divorced,
    Widowed,
}

impl MaritalStatus {
    fn code(self) -> (&'static str, &'static str) {
        match self {
            Self::Single => ("S", "Never Married"),
            Self::Married => ("M", "Married"),
            Self::Divorced => ("D", "Divorced"),
            Self::Widowed => ("W", "Widowed"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PatientIdentity {
    pub(crate) full_url: String,
    pub(crate) name: PersonName,
    /// Family name in use after marriage, when it differs from the birth name.
    pub(crate) married_family: Option<&'static str>,
    pub(crate) birth: UnixSeconds,
    pub(crate) mrn: String,
    pub(crate) nir: String,
    marital_status: MaritalStatus,
    mobile_phone: String,
    home_phone: Option<String>,
    email: Option<String>,
    address_line: String,
    commune: &'static Commune,
}

impl PatientIdentity {
    pub(crate) fn generate(rng: &mut SynthRng, hospital: &Hospital, patient_index: usize) -> Self {
        let full_url = rng.urn_uuid();
        let name = PersonName::draw(rng);
        // Hospital patients are older than the population: 25% under 40, 40% 65 or more.
        // All are adults (21 or more now, so 18 or more at the first visit, three years ago):
        // the hospital has no paediatric ward, and child physiology would need its own ranges.
        let age_years = match rng.below(100) {
            0..25 => rng.between(21, 39),
            25..60 => rng.between(40, 64),
            _ => rng.between(65, 96),
        };
        let birth_day =
            EPOCH_UNIX_SECONDS / DAY_SECONDS - age_years * CENTURY_DAYS / 100 - rng.between(1, 364);
        let birth = birth_day * DAY_SECONDS;
        let married_family = (name.gender == Gender::Female && age_years >= 28 && rng.chance(35))
            .then(|| *rng.pick(name.origin.family))
            .filter(|&family| family != name.family);
        let marital_status = if married_family.is_some() {
            MaritalStatus::Married
        } else {
            match rng.below(10) {
                0..4 => MaritalStatus::Single,
                4..7 => MaritalStatus::Married,
                7..9 => MaritalStatus::Divorced,
                _ if age_years >= 60 => MaritalStatus::Widowed,
                _ => MaritalStatus::Single,
            }
        };
        let mrn = (hospital.mrn_base + patient_index as u64).to_string();
        let nir = draw_nir(rng, &name, birth);
        let mobile_phone = fictional_phone(rng, true);
        let home_phone = rng.chance(30).then(|| fictional_phone(rng, false));
        let email = rng.chance(60).then(|| {
            let domain = rng.pick(&["example.org", "example.com", "example.net"]);
            let family = married_family.unwrap_or(name.family);
            format!(
                "{}.{}@{domain}",
                ascii_slug(name.given[0]),
                ascii_slug(family)
            )
        });
        let address_line = format!("{} {}", rng.between(1, 140), rng.pick(STREETS));
        let commune = rng.pick_weighted(COMMUNES, |commune| commune.weight);
        Self {
            full_url,
            name,
            married_family,
            birth,
            mrn,
            nir,
            marital_status,
            mobile_phone,
            home_phone,
            email,
            address_line,
            commune,
        }
    }

    /// The name the patient goes by: "Given Family" with the married name when there is one.
    pub(crate) fn display_name(&self) -> String {
        self.name
            .display(self.married_family.unwrap_or(self.name.family))
    }

    pub(crate) fn age_years(&self) -> i64 {
        (EPOCH_UNIX_SECONDS - self.birth) / DAY_SECONDS * 100 / CENTURY_DAYS
    }

    pub(crate) fn gender(&self) -> Gender {
        self.name.gender
    }

    /// A reference to the patient *without* a display: the name lives only in the Patient
    /// resource, so masking or de-identifying that one resource hides it everywhere.
    pub(crate) fn reference(&self) -> Value {
        json!({"reference": self.full_url})
    }

    pub(crate) fn resource(&self, hospital: &Hospital) -> Value {
        let name = &self.name;
        // In France the official name is the birth name; a married name is the usual one.
        let mut names =
            vec![json!({"use": "official", "family": name.family, "given": name.given})];
        if let Some(family) = self.married_family {
            names.push(json!({"use": "usual", "family": family, "given": name.given}));
        }
        let mut telecom =
            vec![json!({"system": "phone", "value": self.mobile_phone, "use": "mobile"})];
        if let Some(phone) = &self.home_phone {
            telecom.push(json!({"system": "phone", "value": phone, "use": "home"}));
        }
        if let Some(email) = &self.email {
            telecom.push(json!({"system": "email", "value": email, "use": "home"}));
        }
        let (marital_code, marital_display) = self.marital_status.code();
        json!({
            "resourceType": "Patient",
            "identifier": [
                {
                    "use": "usual",
                    "type": hl7_concept(IDENTIFIER_TYPE_SYSTEM, "MR", "Medical record number"),
                    "system": MRN_SYSTEM,
                    "value": self.mrn,
                    "assigner": hospital.organization_reference(),
                },
                {
                    "use": "official",
                    "type": hl7_concept(IDENTIFIER_TYPE_SYSTEM, "NI", "National unique individual identifier"),
                    "system": INS_NIR_TEST_SYSTEM,
                    "value": self.nir,
                },
            ],
            "active": true,
            "name": names,
            "telecom": telecom,
            "gender": name.gender.fhir_code(),
            "birthDate": fhir_date(self.birth),
            "address": [{
                "use": "home",
                "type": "physical",
                "line": [self.address_line],
                "city": self.commune.name,
                "postalCode": self.commune.postal_code,
                "country": "FR",
            }],
            "maritalStatus": hl7_concept(MARITAL_STATUS_SYSTEM, marital_code, marital_display),
            "communication": [{
                "language": {
                    "coding": [{
                        "system": "urn:ietf:bcp:47",
                        "code": name.origin.language,
                        "display": name.origin.language_display,
                    }],
                },
                "preferred": true,
            }],
            "managingOrganization": hospital.organization_reference(),
        })
    }
}

/// A NIR shaped like a real one (sex, year and month of birth, birthplace, order, key) so
/// that software checking its structure accepts it; it lives in the INS *test* namespace.
fn draw_nir(rng: &mut SynthRng, name: &PersonName, birth: UnixSeconds) -> String {
    let sex_digit = match name.gender {
        Gender::Male => 1,
        Gender::Female => 2,
    };
    let (year, month, _) = crate::time::civil_date(birth);
    // People of a foreign-named family were born abroad more often than not; the NIR then
    // holds `99` and the country's INSEE code instead of a commune.
    let birthplace = if !name.origin.birth_countries.is_empty() && rng.chance(60) {
        rng.pick(name.origin.birth_countries).to_string()
    } else {
        rng.pick(COMMUNES).insee_code.to_string()
    };
    let order = rng.between(1, 999);
    let body = format!(
        "{sex_digit}{:02}{month:02}{birthplace}{order:03}",
        year % 100
    );
    format!("{body}{:02}", nir_key(&body))
}
