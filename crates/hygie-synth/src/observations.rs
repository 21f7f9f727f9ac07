//! Vital signs and laboratory results: what is measured (LOINC, UCUM) and plausible values
//! for a given patient, so that a diabetic's glucose is high and a febrile patient is warm.

use serde_json::{Value, json};

use crate::catalog::{ChronicKind, Code, LOINC};
use crate::fhir::{coding, decimal, hl7_concept, ucum_quantity};
use crate::people::Gender;
use crate::rng::SynthRng;

const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const INTERPRETATION_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    VitalSigns,
    Laboratory,
}

impl Category {
    pub(crate) fn concept(self) -> Value {
        match self {
            Self::VitalSigns => hl7_concept(CATEGORY_SYSTEM, "vital-signs", "Vital Signs"),
            Self::Laboratory => hl7_concept(CATEGORY_SYSTEM, "laboratory", "Laboratory"),
        }
    }
}

/// Every kind of measurement, in the order an encounter takes them: the first
/// `observations_per_encounter` are taken (cycling when more are asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measurement {
    HeartRate,
    BloodPressure,
    BodyTemperature,
    BodyWeight,
    Hemoglobin,
    Glucose,
    Creatinine,
    Potassium,
    RespiratoryRate,
    OxygenSaturation,
    Sodium,
    Leukocytes,
    Platelets,
    CReactiveProtein,
    HemoglobinA1c,
    BodyHeight,
}

pub(crate) const MEASUREMENT_ORDER: [Measurement; 16] = [
    Measurement::HeartRate,
    Measurement::BloodPressure,
    Measurement::BodyTemperature,
    Measurement::BodyWeight,
    Measurement::Hemoglobin,
    Measurement::Glucose,
    Measurement::Creatinine,
    Measurement::Potassium,
    Measurement::RespiratoryRate,
    Measurement::OxygenSaturation,
    Measurement::Sodium,
    Measurement::Leukocytes,
    Measurement::Platelets,
    Measurement::CReactiveProtein,
    Measurement::HemoglobinA1c,
    Measurement::BodyHeight,
];

/// A numeric measurement: its code, unit and, for labs, the normal range.
struct Spec {
    category: Category,
    loinc: Code,
    unit: &'static str,
    ucum: &'static str,
    decimals: u32,
    /// Normal range in the same scaled units as the value, per sex (female, male).
    normal_female: (Option<i64>, Option<i64>),
    normal_male: (Option<i64>, Option<i64>),
}

const fn vital(
    code: &'static str,
    display: &'static str,
    unit: &'static str,
    ucum: &'static str,
    decimals: u32,
) -> Spec {
    Spec {
        category: Category::VitalSigns,
        loinc: Code { code, display },
        unit,
        ucum,
        decimals,
        normal_female: (None, None),
        normal_male: (None, None),
    }
}

const fn lab(
    code: &'static str,
    display: &'static str,
    unit: &'static str,
    decimals: u32,
    normal: (Option<i64>, Option<i64>),
) -> Spec {
    Spec {
        category: Category::Laboratory,
        loinc: Code { code, display },
        unit,
        ucum: unit,
        decimals,
        normal_female: normal,
        normal_male: normal,
    }
}

const BLOOD_PRESSURE_PANEL: Code = Code {
    code: "85354-9",
    display: "Blood pressure panel with all children optional",
};
const SYSTOLIC: Code = Code {
    code: "8480-6",
    display: "Systolic blood pressure",
};
const DIASTOLIC: Code = Code {
    code: "8462-4",
    display: "Diastolic blood pressure",
};
/// The generic vital-signs code FHIR's oxygen-saturation profile asks for beside 59408-5.
const ARTERIAL_SATURATION: Code = Code {
    code: "2708-6",
    display: "Oxygen saturation in Arterial blood",
};

impl Measurement {
    pub(crate) fn category(self) -> Category {
        match self {
            Self::BloodPressure => Category::VitalSigns,
            other => other.spec().category,
        }
    }

    /// Not called for blood pressure, which has two components instead of one value.
    fn spec(self) -> Spec {
        match self {
            Self::HeartRate => vital("8867-4", "Heart rate", "beats/minute", "/min", 0),
            Self::BloodPressure => unreachable!("blood pressure is a panel of two components"),
            Self::BodyTemperature => vital("8310-5", "Body temperature", "°C", "Cel", 1),
            Self::BodyWeight => vital("29463-7", "Body weight", "kg", "kg", 1),
            Self::BodyHeight => vital("8302-2", "Body height", "cm", "cm", 0),
            Self::RespiratoryRate => {
                vital("9279-1", "Respiratory rate", "breaths/minute", "/min", 0)
            }
            Self::OxygenSaturation => vital(
                "59408-5",
                "Oxygen saturation in Arterial blood by Pulse oximetry",
                "%",
                "%",
                0,
            ),
            Self::Hemoglobin => Spec {
                normal_female: (Some(120), Some(155)),
                normal_male: (Some(135), Some(170)),
                ..lab(
                    "718-7",
                    "Hemoglobin [Mass/volume] in Blood",
                    "g/dL",
                    1,
                    (None, None),
                )
            },
            Self::Glucose => lab(
                "2345-7",
                "Glucose [Mass/volume] in Serum or Plasma",
                "mg/dL",
                0,
                (Some(70), Some(99)),
            ),
            Self::Creatinine => Spec {
                normal_female: (Some(50), Some(100)),
                normal_male: (Some(70), Some(120)),
                ..lab(
                    "2160-0",
                    "Creatinine [Mass/volume] in Serum or Plasma",
                    "mg/dL",
                    2,
                    (None, None),
                )
            },
            Self::Potassium => lab(
                "2823-3",
                "Potassium [Moles/volume] in Serum or Plasma",
                "mmol/L",
                1,
                (Some(35), Some(50)),
            ),
            Self::Sodium => lab(
                "2951-2",
                "Sodium [Moles/volume] in Serum or Plasma",
                "mmol/L",
                0,
                (Some(135), Some(145)),
            ),
            Self::Leukocytes => lab(
                "6690-2",
                "Leukocytes [#/volume] in Blood by Automated count",
                "10*3/uL",
                1,
                (Some(40), Some(100)),
            ),
            Self::Platelets => lab(
                "777-3",
                "Platelets [#/volume] in Blood by Automated count",
                "10*3/uL",
                0,
                (Some(150), Some(400)),
            ),
            Self::CReactiveProtein => lab(
                "1988-5",
                "C reactive protein [Mass/volume] in Serum or Plasma",
                "mg/L",
                1,
                (None, Some(50)),
            ),
            Self::HemoglobinA1c => lab(
                "4548-4",
                "Hemoglobin A1c/Hemoglobin.total in Blood",
                "%",
                1,
                (None, Some(56)),
            ),
        }
    }
}

/// A patient's usual values (scaled like the measurements), drawn once so that repeated
/// measurements of one patient agree with each other and with their conditions.
#[derive(Debug, Clone)]
pub(crate) struct Physiology {
    gender: Gender,
    heart_rate: i64,
    systolic: i64,
    diastolic: i64,
    height_cm: i64,
    weight_kg_tenths: i64,
    respiratory_rate: i64,
    oxygen_saturation: i64,
    hemoglobin: i64,
    glucose: i64,
    creatinine: i64,
    potassium: i64,
    sodium: i64,
    leukocytes: i64,
    platelets: i64,
    c_reactive_protein: i64,
    hemoglobin_a1c: i64,
}

impl Physiology {
    pub(crate) fn draw(rng: &mut SynthRng, gender: Gender, chronic: &[ChronicKind]) -> Self {
        let has = |kind| chronic.contains(&kind);
        let female = gender == Gender::Female;
        let height_cm = if female {
            rng.between(152, 174)
        } else {
            rng.between(163, 190)
        };
        let bmi_tenths = rng.between(190, 300) + if has(ChronicKind::Diabetes) { 45 } else { 0 };
        Self {
            gender,
            heart_rate: rng.between(60, 84)
                + if has(ChronicKind::AtrialFibrillation) {
                    18
                } else {
                    0
                },
            systolic: rng.between(108, 132)
                + if has(ChronicKind::Hypertension) {
                    22
                } else {
                    0
                },
            diastolic: rng.between(64, 80)
                + if has(ChronicKind::Hypertension) {
                    10
                } else {
                    0
                },
            height_cm,
            // Weight in tenths of a kilogram: BMI × height².
            weight_kg_tenths: bmi_tenths * height_cm * height_cm / 10_000,
            respiratory_rate: rng.between(12, 18) + if has(ChronicKind::Copd) { 4 } else { 0 },
            oxygen_saturation: rng.between(95, 99) - if has(ChronicKind::Copd) { 5 } else { 0 },
            hemoglobin: if female {
                rng.between(122, 150)
            } else {
                rng.between(137, 165)
            } - if has(ChronicKind::ChronicKidneyDisease) {
                20
            } else {
                0
            },
            glucose: if has(ChronicKind::Diabetes) {
                rng.between(130, 220)
            } else {
                rng.between(75, 98)
            },
            creatinine: if female {
                rng.between(55, 92)
            } else {
                rng.between(72, 112)
            } + if has(ChronicKind::ChronicKidneyDisease) {
                rng.between(90, 220)
            } else {
                0
            },
            potassium: rng.between(37, 47)
                + if has(ChronicKind::ChronicKidneyDisease) {
                    5
                } else {
                    0
                },
            sodium: rng.between(137, 143),
            leukocytes: rng.between(45, 92),
            platelets: rng.between(170, 360),
            c_reactive_protein: rng.between(5, 35),
            hemoglobin_a1c: if has(ChronicKind::Diabetes) {
                rng.between(66, 92)
            } else {
                rng.between(48, 55)
            },
        }
    }

    /// Builds the measurement part of an Observation (code, value or components,
    /// interpretation, reference range) for one measurement during an encounter.
    pub(crate) fn observe(
        &self,
        rng: &mut SynthRng,
        measurement: Measurement,
        infection: bool,
    ) -> Value {
        if measurement == Measurement::BloodPressure {
            let systolic = self.systolic + rng.between(-8, 8);
            let diastolic = self.diastolic + rng.between(-5, 5);
            let component = |code: Code, value: i64| {
                json!({
                    "code": {"coding": [coding(LOINC, code)], "text": code.display},
                    "valueQuantity": ucum_quantity(decimal(value, 0), "mmHg", "mm[Hg]"),
                })
            };
            return json!({
                "code": {"coding": [coding(LOINC, BLOOD_PRESSURE_PANEL)], "text": "Blood pressure"},
                "component": [component(SYSTOLIC, systolic), component(DIASTOLIC, diastolic)],
            });
        }
        let value = self.value(rng, measurement, infection);
        let spec = measurement.spec();
        let mut codings = vec![coding(LOINC, spec.loinc)];
        if measurement == Measurement::OxygenSaturation {
            codings.push(coding(LOINC, ARTERIAL_SATURATION));
        }
        let mut observed = json!({
            "code": {"coding": codings, "text": spec.loinc.display},
            "valueQuantity": ucum_quantity(decimal(value, spec.decimals), spec.unit, spec.ucum),
        });
        let (low, high) = match self.gender {
            Gender::Female => spec.normal_female,
            Gender::Male => spec.normal_male,
        };
        if low.is_some() || high.is_some() {
            let interpretation = if low.is_some_and(|low| value < low) {
                ("L", "Low")
            } else if high.is_some_and(|high| value > high) {
                ("H", "High")
            } else {
                ("N", "Normal")
            };
            observed["interpretation"] = json!([hl7_concept(
                INTERPRETATION_SYSTEM,
                interpretation.0,
                interpretation.1
            )]);
            let bound =
                |limit: i64| ucum_quantity(decimal(limit, spec.decimals), spec.unit, spec.ucum);
            let mut range = json!({});
            if let Some(low) = low {
                range["low"] = bound(low);
            }
            if let Some(high) = high {
                range["high"] = bound(high);
            }
            observed["referenceRange"] = json!([range]);
        }
        observed
    }

    /// One measured value, scaled by the measurement's decimals.
    fn value(&self, rng: &mut SynthRng, measurement: Measurement, infection: bool) -> i64 {
        let fever = i64::from(infection);
        match measurement {
            Measurement::HeartRate => self.heart_rate + rng.between(-6, 6) + 16 * fever,
            Measurement::BodyTemperature => {
                if infection {
                    rng.between(381, 394)
                } else {
                    rng.between(363, 373)
                }
            }
            Measurement::BodyWeight => self.weight_kg_tenths + rng.between(-15, 15),
            Measurement::BodyHeight => self.height_cm,
            Measurement::RespiratoryRate => self.respiratory_rate + rng.between(-2, 2) + 6 * fever,
            Measurement::OxygenSaturation => {
                (self.oxygen_saturation + rng.between(-1, 1) - 3 * fever).min(100)
            }
            Measurement::Hemoglobin => self.hemoglobin + rng.between(-5, 5),
            Measurement::Glucose => self.glucose + rng.between(-10, 10),
            Measurement::Creatinine => self.creatinine + rng.between(-8, 8),
            Measurement::Potassium => self.potassium + rng.between(-2, 2),
            Measurement::Sodium => self.sodium + rng.between(-2, 2),
            Measurement::Leukocytes => {
                if infection {
                    rng.between(115, 180)
                } else {
                    self.leukocytes + rng.between(-5, 5)
                }
            }
            Measurement::Platelets => self.platelets + rng.between(-20, 20),
            Measurement::CReactiveProtein => {
                if infection {
                    rng.between(400, 1800)
                } else {
                    self.c_reactive_protein + rng.between(-4, 4)
                }
            }
            Measurement::HemoglobinA1c => self.hemoglobin_a1c + rng.between(-2, 2),
            Measurement::BloodPressure => unreachable!("blood pressure has components"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_measurement_appears_once_in_the_order() {
        for (index, measurement) in MEASUREMENT_ORDER.iter().enumerate() {
            assert!(
                !MEASUREMENT_ORDER[index + 1..].contains(measurement),
                "{measurement:?}"
            );
        }
        let vital_signs = MEASUREMENT_ORDER
            .iter()
            .filter(|m| m.category() == Category::VitalSigns)
            .count();
        assert_eq!(vital_signs, 7);
    }

    #[test]
    fn conditions_show_in_the_values() {
        let mut rng = SynthRng::for_stream(5, 0, 0);
        for _ in 0..50 {
            let healthy = Physiology::draw(&mut rng, Gender::Male, &[]);
            let diabetic = Physiology::draw(&mut rng, Gender::Male, &[ChronicKind::Diabetes]);
            assert!(healthy.glucose < 100 && diabetic.glucose >= 130);
            assert!(healthy.hemoglobin_a1c <= 56 && diabetic.hemoglobin_a1c > 56);
            let febrile = healthy.value(&mut rng, Measurement::BodyTemperature, true);
            assert!(febrile >= 380);
            let saturation = healthy.value(&mut rng, Measurement::OxygenSaturation, false);
            assert!((90..=100).contains(&saturation));
        }
    }

    #[test]
    fn lab_results_carry_a_consistent_interpretation() {
        let mut rng = SynthRng::for_stream(6, 0, 0);
        let patient = Physiology::draw(&mut rng, Gender::Female, &[ChronicKind::Diabetes]);
        let glucose = patient.observe(&mut rng, Measurement::Glucose, false);
        assert_eq!(glucose["interpretation"][0]["coding"][0]["code"], "H");
        assert_eq!(glucose["referenceRange"][0]["high"]["value"], 99);
        let heart_rate = patient.observe(&mut rng, Measurement::HeartRate, false);
        assert!(heart_rate.get("referenceRange").is_none());
        let pressure = patient.observe(&mut rng, Measurement::BloodPressure, false);
        assert!(pressure.get("valueQuantity").is_none());
        assert_eq!(pressure["component"].as_array().unwrap().len(), 2);
    }
}
