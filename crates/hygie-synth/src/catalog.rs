//! The fixed vocabularies the generator draws from: names, places, and the clinical codes
//! (LOINC, SNOMED CT, ATC, UCUM) that make each generated resource mean something.
//!
//! Codes are real codes of their systems, chosen so that the data reads as plausible to a
//! clinician; they are not a terminology service.

pub(crate) const LOINC: &str = "http://loinc.org";
pub(crate) const SNOMED_CT: &str = "http://snomed.info/sct";
pub(crate) const ATC: &str = "http://www.whocc.no/atc";
pub(crate) const UCUM: &str = "http://unitsofmeasure.org";

/// A family of names that are common together, with the language its speakers often prefer.
#[derive(Debug)]
pub(crate) struct NameOrigin {
    /// Relative frequency among generated people.
    pub(crate) weight: u64,
    /// BCP 47 language tag for `Patient.communication`.
    pub(crate) language: &'static str,
    pub(crate) language_display: &'static str,
    pub(crate) female_given: &'static [&'static str],
    pub(crate) male_given: &'static [&'static str],
    pub(crate) family: &'static [&'static str],
    /// INSEE codes of the countries people of this origin may be born in (empty: France).
    pub(crate) birth_countries: &'static [&'static str],
}

#[rustfmt::skip]
pub(crate) const NAME_ORIGINS: &[NameOrigin] = &[
    NameOrigin {
        weight: 55,
        language: "fr",
        language_display: "French",
        female_given: &[
            "Camille", "Léa", "Manon", "Chloé", "Inès", "Jeanne", "Louise", "Marie", "Élise",
            "Anne", "Claire", "Sophie", "Nathalie", "Isabelle", "Françoise", "Monique",
            "Hélène", "Juliette", "Margaux", "Océane", "Brigitte", "Sylvie", "Céline",
            "Aurélie",
        ],
        male_given: &[
            "Lucas", "Hugo", "Louis", "Gabriel", "Jules", "Arthur", "Nicolas", "Thomas",
            "Julien", "Pierre", "Jean", "Michel", "Philippe", "Alain", "Bernard", "François",
            "Olivier", "Sébastien", "Mathieu", "Antoine", "Étienne", "Rémi", "Yves", "Gérard",
        ],
        family: &[
            "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand",
            "Leroy", "Moreau", "Simon", "Laurent", "Lefèvre", "Michel", "David", "Bertrand",
            "Roux", "Vincent", "Fournier", "Morel", "Girard", "André", "Mercier", "Dupont",
            "Lambert", "Bonnet", "Legrand", "Garnier", "Faure", "Rousseau", "Blanc", "Guérin",
            "Muller", "Henry", "Perrin", "Morin", "Clément", "Gauthier", "Fontaine",
            "Chevalier", "Le Gall", "Le Goff", "Kerbrat", "Delacroix", "Dupuis", "Fabre",
            "Besnard", "Lemaître",
        ],
        birth_countries: &[],
    },
    NameOrigin {
        weight: 10,
        language: "ar",
        language_display: "Arabic",
        female_given: &[
            "Fatima", "Amina", "Yasmine", "Leïla", "Nadia", "Samira", "Khadija", "Salma", "Meriem",
        ],
        male_given: &[
            "Mohamed", "Karim", "Youssef", "Mehdi", "Rachid", "Samir", "Omar", "Bilal", "Nabil",
        ],
        family: &[
            "Benali", "Haddad", "Belkacem", "Mansouri", "Bouzid", "Cherif", "Amrani",
            "El Idrissi", "Benmoussa", "Ziani", "Saïdi", "Brahimi",
        ],
        // Morocco, Algeria, Tunisia.
        birth_countries: &["99350", "99352", "99351"],
    },
    NameOrigin {
        weight: 5,
        language: "pt",
        language_display: "Portuguese",
        female_given: &["Ana", "Beatriz", "Mariana", "Joana", "Rita", "Inês"],
        male_given: &["João", "Tiago", "Rui", "Miguel", "Pedro", "Duarte"],
        family: &[
            "Da Silva", "Pereira", "Ferreira", "Rodrigues", "Gonçalves", "Oliveira", "Costa",
            "Carvalho",
        ],
        birth_countries: &["99139"],
    },
    NameOrigin {
        weight: 4,
        language: "es",
        language_display: "Spanish",
        female_given: &["Lucía", "Carmen", "Elena", "Paula", "Rocío"],
        male_given: &["Alejandro", "Javier", "Diego", "Sergio", "Álvaro"],
        family: &[
            "García", "Martínez", "López", "Sánchez", "Fernández", "Romero", "Navarro",
        ],
        birth_countries: &["99134"],
    },
    NameOrigin {
        weight: 4,
        language: "it",
        language_display: "Italian",
        female_given: &["Giulia", "Francesca", "Chiara", "Alessandra"],
        male_given: &["Marco", "Luca", "Giovanni", "Matteo"],
        family: &[
            "Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo",
        ],
        birth_countries: &["99127"],
    },
    NameOrigin {
        weight: 4,
        language: "fr",
        language_display: "French",
        female_given: &["Aïssatou", "Fatou", "Mariama", "Awa", "Aminata", "Khady"],
        male_given: &[
            "Mamadou", "Ousmane", "Abdoulaye", "Cheikh", "Moussa", "Ibrahima",
        ],
        family: &[
            "Diallo", "Ndiaye", "Diop", "Sow", "Fall", "Traoré", "Camara", "Cissé",
        ],
        // Senegal, Mali, Guinea.
        birth_countries: &["99341", "99335", "99330"],
    },
    NameOrigin {
        weight: 3,
        language: "vi",
        language_display: "Vietnamese",
        female_given: &["Linh", "Mai", "Lan", "Hoa", "Trang", "Ngọc"],
        male_given: &["Minh", "Đức", "Huy", "Long", "Tuấn", "Quang"],
        family: &["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ"],
        birth_countries: &["99243"],
    },
    NameOrigin {
        weight: 3,
        language: "zh",
        language_display: "Chinese",
        female_given: &["Mei", "Xiu Ying", "Li Na", "Jing", "Yan"],
        male_given: &["Wei", "Jun", "Hao", "Lei", "Zhi Qiang"],
        family: &["Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang"],
        birth_countries: &["99216"],
    },
    NameOrigin {
        weight: 3,
        language: "pl",
        language_display: "Polish",
        female_given: &["Anna", "Katarzyna", "Małgorzata", "Agnieszka", "Zofia"],
        male_given: &["Piotr", "Krzysztof", "Tomasz", "Paweł", "Jakub"],
        family: &[
            "Nowak", "Wójcik", "Kowalczyk", "Woźniak", "Mazur", "Krawczyk", "Zając",
        ],
        birth_countries: &["99122"],
    },
    NameOrigin {
        weight: 3,
        language: "tr",
        language_display: "Turkish",
        female_given: &["Elif", "Zeynep", "Ayşe", "Emine", "Merve"],
        male_given: &["Mehmet", "Mustafa", "Ahmet", "Emre", "Burak"],
        family: &[
            "Yılmaz", "Kaya", "Demir", "Şahin", "Çelik", "Yıldız", "Öztürk",
        ],
        birth_countries: &["99208"],
    },
    NameOrigin {
        weight: 3,
        language: "en",
        language_display: "English",
        female_given: &["Emily", "Sarah", "Olivia", "Charlotte", "Grace"],
        male_given: &["James", "Oliver", "William", "Harry", "George"],
        family: &[
            "Smith", "Jones", "Taylor", "Brown", "Williams", "Evans", "O'Connor",
        ],
        birth_countries: &["99132"],
    },
    NameOrigin {
        weight: 2,
        language: "de",
        language_display: "German",
        female_given: &["Anna", "Lena", "Katharina", "Ursula"],
        male_given: &["Lukas", "Felix", "Jonas", "Klaus"],
        family: &[
            "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Becker", "Wagner",
        ],
        birth_countries: &["99109"],
    },
];

/// A commune that patients live or were born in.
#[derive(Debug)]
pub(crate) struct Commune {
    pub(crate) name: &'static str,
    pub(crate) postal_code: &'static str,
    /// INSEE commune code (department + commune), as used inside a NIR.
    pub(crate) insee_code: &'static str,
    /// Relative frequency as a home address: the hospital is in Paris, so most live nearby.
    pub(crate) weight: u64,
}

#[rustfmt::skip]
pub(crate) const COMMUNES: &[Commune] = &[
    Commune { name: "Paris", postal_code: "75011", insee_code: "75111", weight: 8 },
    Commune { name: "Paris", postal_code: "75013", insee_code: "75113", weight: 10 },
    Commune { name: "Paris", postal_code: "75018", insee_code: "75118", weight: 7 },
    Commune { name: "Paris", postal_code: "75020", insee_code: "75120", weight: 7 },
    Commune { name: "Saint-Denis", postal_code: "93200", insee_code: "93066", weight: 4 },
    Commune { name: "Montreuil", postal_code: "93100", insee_code: "93048", weight: 4 },
    Commune { name: "Créteil", postal_code: "94000", insee_code: "94028", weight: 4 },
    Commune { name: "Ivry-sur-Seine", postal_code: "94200", insee_code: "94041", weight: 6 },
    Commune { name: "Vincennes", postal_code: "94300", insee_code: "94080", weight: 3 },
    Commune { name: "Boulogne-Billancourt", postal_code: "92100", insee_code: "92012", weight: 3 },
    Commune { name: "Nanterre", postal_code: "92000", insee_code: "92050", weight: 2 },
    Commune { name: "Versailles", postal_code: "78000", insee_code: "78646", weight: 2 },
    Commune { name: "Argenteuil", postal_code: "95100", insee_code: "95018", weight: 2 },
    Commune { name: "Évry-Courcouronnes", postal_code: "91000", insee_code: "91228", weight: 2 },
    Commune { name: "Lyon", postal_code: "69003", insee_code: "69383", weight: 1 },
    Commune { name: "Marseille", postal_code: "13005", insee_code: "13205", weight: 1 },
    Commune { name: "Lille", postal_code: "59000", insee_code: "59350", weight: 1 },
    Commune { name: "Bordeaux", postal_code: "33000", insee_code: "33063", weight: 1 },
    Commune { name: "Toulouse", postal_code: "31000", insee_code: "31555", weight: 1 },
    Commune { name: "Nantes", postal_code: "44000", insee_code: "44109", weight: 1 },
    Commune { name: "Strasbourg", postal_code: "67000", insee_code: "67482", weight: 1 },
    Commune { name: "Rennes", postal_code: "35000", insee_code: "35238", weight: 1 },
];

pub(crate) const STREETS: &[&str] = &[
    "rue de la République",
    "avenue Jean Jaurès",
    "boulevard Voltaire",
    "rue Victor Hugo",
    "rue de Tolbiac",
    "avenue d'Italie",
    "rue des Lilas",
    "allée des Tilleuls",
    "rue Pasteur",
    "place de la Mairie",
    "rue du Général Leclerc",
    "impasse des Vignes",
    "rue Gambetta",
    "quai de la Loire",
    "rue Paul Vaillant-Couturier",
    "avenue du Maréchal Foch",
];

/// A coding from a code system: `(code, display)` with the system named by the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Code {
    pub(crate) code: &'static str,
    pub(crate) display: &'static str,
}

const fn code(code: &'static str, display: &'static str) -> Code {
    Code { code, display }
}

/// A drug as prescribed: ATC substance code plus the product text a prescriber writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Medication {
    pub(crate) atc: Code,
    pub(crate) product: &'static str,
    pub(crate) dosage_text: &'static str,
    pub(crate) doses_per_day: u32,
    /// `None` for a long-term treatment, else the course length.
    pub(crate) course_days: Option<u32>,
    /// A penicillin: not to be given to a patient allergic to penicillin.
    pub(crate) is_penicillin: bool,
}

const fn long_term(
    atc: Code,
    product: &'static str,
    dosage_text: &'static str,
    doses_per_day: u32,
) -> Medication {
    Medication {
        atc,
        product,
        dosage_text,
        doses_per_day,
        course_days: None,
        is_penicillin: false,
    }
}

const fn course(
    atc: Code,
    product: &'static str,
    dosage_text: &'static str,
    doses_per_day: u32,
    days: u32,
) -> Medication {
    Medication {
        atc,
        product,
        dosage_text,
        doses_per_day,
        course_days: Some(days),
        is_penicillin: false,
    }
}

const AMOXICILLIN: Medication = Medication {
    is_penicillin: true,
    ..course(
        code("J01CA04", "amoxicillin"),
        "amoxicillin 1 g tablet",
        "1 tablet three times a day for 7 days",
        3,
        7,
    )
};
const AZITHROMYCIN: Medication = course(
    code("J01FA10", "azithromycin"),
    "azithromycin 500 mg tablet",
    "1 tablet once a day for 3 days",
    1,
    3,
);
const PARACETAMOL: Medication = course(
    code("N02BE01", "paracetamol"),
    "paracetamol 1 g tablet",
    "1 tablet up to four times a day if needed, at least 6 hours apart, for 5 days",
    4,
    5,
);

/// A condition the generator can diagnose, with the treatment it triggers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Diagnosis {
    pub(crate) snomed: Code,
    pub(crate) treatment: Medication,
    /// Given instead of `treatment` to a patient allergic to penicillin.
    pub(crate) penicillin_free_treatment: Option<Medication>,
    /// Raises temperature, white cells and CRP in the labs of its encounter.
    pub(crate) is_infection: bool,
}

const fn diagnosis(snomed: Code, treatment: Medication) -> Diagnosis {
    Diagnosis {
        snomed,
        treatment,
        penicillin_free_treatment: None,
        is_infection: false,
    }
}

const fn infection(snomed: Code, treatment: Medication) -> Diagnosis {
    Diagnosis {
        snomed,
        treatment,
        penicillin_free_treatment: None,
        is_infection: true,
    }
}

/// A long-term condition and how it shows in the patient's measurements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChronicCondition {
    pub(crate) diagnosis: Diagnosis,
    pub(crate) kind: ChronicKind,
    /// Percent chance for a patient of 65 or more; younger patients get a third of it.
    pub(crate) percent_from_65: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChronicKind {
    Hypertension,
    Diabetes,
    Hyperlipidemia,
    AtrialFibrillation,
    HeartFailure,
    Asthma,
    Copd,
    Hypothyroidism,
    Depression,
    ChronicKidneyDisease,
}

pub(crate) const CHRONIC_CONDITIONS: &[ChronicCondition] = &[
    ChronicCondition {
        kind: ChronicKind::Hypertension,
        percent_from_65: 45,
        diagnosis: diagnosis(
            code(
                "38341003",
                "Hypertensive disorder, systemic arterial (disorder)",
            ),
            long_term(
                code("C08CA01", "amlodipine"),
                "amlodipine 5 mg tablet",
                "1 tablet once a day",
                1,
            ),
        ),
    },
    ChronicCondition {
        kind: ChronicKind::Diabetes,
        percent_from_65: 18,
        diagnosis: diagnosis(
            code("44054006", "Diabetes mellitus type 2 (disorder)"),
            long_term(
                code("A10BA02", "metformin"),
                "metformin 1000 mg tablet",
                "1 tablet twice a day with meals",
                2,
            ),
        ),
    },
    ChronicCondition {
        kind: ChronicKind::Hyperlipidemia,
        percent_from_65: 25,
        diagnosis: diagnosis(
            code("55822004", "Hyperlipidemia (disorder)"),
            long_term(
                code("C10AA05", "atorvastatin"),
                "atorvastatin 20 mg tablet",
                "1 tablet once a day in the evening",
                1,
            ),
        ),
    },
    ChronicCondition {
        kind: ChronicKind::AtrialFibrillation,
        percent_from_65: 10,
        diagnosis: diagnosis(
            code("49436004", "Atrial fibrillation (disorder)"),
            long_term(
                code("B01AF02", "apixaban"),
                "apixaban 5 mg tablet",
                "1 tablet twice a day",
                2,
            ),
        ),
    },
    ChronicCondition {
        kind: ChronicKind::HeartFailure,
        percent_from_65: 8,
        diagnosis: diagnosis(
            code("84114007", "Heart failure (disorder)"),
            long_term(
                code("C03CA01", "furosemide"),
                "furosemide 40 mg tablet",
                "1 tablet every morning",
                1,
            ),
        ),
    },
    ChronicCondition {
        kind: ChronicKind::Asthma,
        percent_from_65: 8,
        diagnosis: diagnosis(
            code("195967001", "Asthma (disorder)"),
            long_term(
                code("R03AC02", "salbutamol"),
                "salbutamol 100 micrograms/dose pressurised inhaler",
                "2 puffs when short of breath, up to 4 times a day",
                4,
            ),
        ),
    },
    ChronicCondition {
        kind: ChronicKind::Copd,
        percent_from_65: 9,
        diagnosis: diagnosis(
            code("13645005", "Chronic obstructive lung disease (disorder)"),
            long_term(
                code("R03BB04", "tiotropium bromide"),
                "tiotropium 18 micrograms inhalation powder, hard capsule",
                "inhale the content of 1 capsule once a day",
                1,
            ),
        ),
    },
    ChronicCondition {
        kind: ChronicKind::Hypothyroidism,
        percent_from_65: 8,
        diagnosis: diagnosis(
            code("40930008", "Hypothyroidism (disorder)"),
            long_term(
                code("H03AA01", "levothyroxine sodium"),
                "levothyroxine 75 micrograms tablet",
                "1 tablet every morning before breakfast",
                1,
            ),
        ),
    },
    ChronicCondition {
        kind: ChronicKind::Depression,
        percent_from_65: 9,
        diagnosis: diagnosis(
            code("35489007", "Depressive disorder (disorder)"),
            long_term(
                code("N06AB06", "sertraline"),
                "sertraline 50 mg tablet",
                "1 tablet once a day",
                1,
            ),
        ),
    },
    ChronicCondition {
        kind: ChronicKind::ChronicKidneyDisease,
        percent_from_65: 7,
        diagnosis: diagnosis(
            code("709044004", "Chronic kidney disease (disorder)"),
            long_term(
                code("C09AA05", "ramipril"),
                "ramipril 2.5 mg tablet",
                "1 tablet once a day",
                1,
            ),
        ),
    },
];

const PNEUMONIA: Diagnosis = Diagnosis {
    penicillin_free_treatment: Some(AZITHROMYCIN),
    ..infection(code("233604007", "Pneumonia (disorder)"), AMOXICILLIN)
};
const URINARY_TRACT_INFECTION: Diagnosis = infection(
    code("68566005", "Urinary tract infectious disease (disorder)"),
    course(
        code("J01XX01", "fosfomycin"),
        "fosfomycin 3 g granules for oral solution",
        "1 sachet once, in the evening",
        1,
        1,
    ),
);
const ACUTE_BRONCHITIS: Diagnosis =
    infection(code("10509002", "Acute bronchitis (disorder)"), PARACETAMOL);
const VIRAL_PHARYNGITIS: Diagnosis = infection(
    code("195662009", "Acute viral pharyngitis (disorder)"),
    PARACETAMOL,
);
const HEADACHE: Diagnosis = diagnosis(code("25064002", "Headache (finding)"), PARACETAMOL);
const CHEST_PAIN: Diagnosis = diagnosis(code("29857009", "Chest pain (finding)"), PARACETAMOL);
const ANKLE_SPRAIN: Diagnosis = diagnosis(
    code("44465007", "Sprain of ankle (disorder)"),
    course(
        code("M01AE01", "ibuprofen"),
        "ibuprofen 400 mg tablet",
        "1 tablet three times a day with meals for 5 days",
        3,
        5,
    ),
);
const FOREARM_LACERATION: Diagnosis = diagnosis(
    code("283371005", "Laceration of forearm (disorder)"),
    PARACETAMOL,
);
const CONCUSSION: Diagnosis = diagnosis(
    code(
        "62106007",
        "Concussion with no loss of consciousness (disorder)",
    ),
    PARACETAMOL,
);
const FEMUR_FRACTURE: Diagnosis = diagnosis(
    code("71620000", "Fracture of femur (disorder)"),
    course(
        code("B01AB05", "enoxaparin"),
        "enoxaparin 4000 IU (40 mg)/0.4 mL solution for injection",
        "1 subcutaneous injection once a day for 35 days",
        1,
        35,
    ),
);
const MYOCARDIAL_INFARCTION: Diagnosis = diagnosis(
    code("22298006", "Myocardial infarction (disorder)"),
    long_term(
        code("B01AC06", "acetylsalicylic acid"),
        "acetylsalicylic acid 75 mg tablet",
        "1 tablet once a day",
        1,
    ),
);
const STROKE: Diagnosis = diagnosis(
    code("230690007", "Cerebrovascular accident (disorder)"),
    long_term(
        code("B01AC04", "clopidogrel"),
        "clopidogrel 75 mg tablet",
        "1 tablet once a day",
        1,
    ),
);

/// What brings a patient to an outpatient consultation.
pub(crate) const AMBULATORY_DIAGNOSES: &[Diagnosis] = &[
    ACUTE_BRONCHITIS,
    VIRAL_PHARYNGITIS,
    URINARY_TRACT_INFECTION,
    HEADACHE,
    ANKLE_SPRAIN,
];
/// What brings a patient to the emergency department.
pub(crate) const EMERGENCY_DIAGNOSES: &[Diagnosis] = &[
    PNEUMONIA,
    URINARY_TRACT_INFECTION,
    CHEST_PAIN,
    ANKLE_SPRAIN,
    FOREARM_LACERATION,
    CONCUSSION,
    FEMUR_FRACTURE,
    HEADACHE,
    ACUTE_BRONCHITIS,
];
/// What gets a patient admitted.
pub(crate) const INPATIENT_DIAGNOSES: &[Diagnosis] =
    &[PNEUMONIA, MYOCARDIAL_INFARCTION, STROKE, FEMUR_FRACTURE];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllergyCategory {
    Food,
    Medication,
    Environment,
}

impl AllergyCategory {
    pub(crate) fn fhir_code(self) -> &'static str {
        match self {
            Self::Food => "food",
            Self::Medication => "medication",
            Self::Environment => "environment",
        }
    }
}

pub(crate) struct Allergy {
    pub(crate) snomed: Code,
    pub(crate) category: AllergyCategory,
    pub(crate) reactions: &'static [Code],
    pub(crate) is_penicillin: bool,
}

const WHEAL: Code = code("247472004", "Wheal (finding)");
const SKIN_ERUPTION: Code = code("271807003", "Eruption of skin (disorder)");
const ANAPHYLAXIS: Code = code("39579001", "Anaphylaxis (disorder)");
const DYSPNEA: Code = code("267036007", "Dyspnea (finding)");
const RHINOCONJUNCTIVITIS: Code = code("878820003", "Rhinoconjunctivitis (disorder)");
const ITCHING: Code = code("418290006", "Itching (finding)");

pub(crate) const ALLERGIES: &[Allergy] = &[
    Allergy {
        snomed: code("91936005", "Allergy to penicillin (finding)"),
        category: AllergyCategory::Medication,
        reactions: &[WHEAL, SKIN_ERUPTION, ANAPHYLAXIS],
        is_penicillin: true,
    },
    Allergy {
        snomed: code("91935009", "Allergy to peanuts (finding)"),
        category: AllergyCategory::Food,
        reactions: &[WHEAL, ANAPHYLAXIS, ITCHING],
        is_penicillin: false,
    },
    Allergy {
        snomed: code("300916003", "Latex allergy (finding)"),
        category: AllergyCategory::Environment,
        reactions: &[WHEAL, ITCHING, SKIN_ERUPTION],
        is_penicillin: false,
    },
    Allergy {
        snomed: code("418689008", "Allergy to grass pollen (finding)"),
        category: AllergyCategory::Environment,
        reactions: &[RHINOCONJUNCTIVITIS, DYSPNEA],
        is_penicillin: false,
    },
    Allergy {
        snomed: code("232350006", "House dust mite allergy (finding)"),
        category: AllergyCategory::Environment,
        reactions: &[RHINOCONJUNCTIVITIS, DYSPNEA],
        is_penicillin: false,
    },
    Allergy {
        snomed: code("300913006", "Shellfish allergy (finding)"),
        category: AllergyCategory::Food,
        reactions: &[WHEAL, ANAPHYLAXIS, ITCHING],
        is_penicillin: false,
    },
    Allergy {
        snomed: code("91930004", "Allergy to eggs (finding)"),
        category: AllergyCategory::Food,
        reactions: &[SKIN_ERUPTION, ITCHING],
        is_penicillin: false,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn all_diagnoses() -> impl Iterator<Item = &'static Diagnosis> {
        CHRONIC_CONDITIONS
            .iter()
            .map(|chronic| &chronic.diagnosis)
            .chain(AMBULATORY_DIAGNOSES)
            .chain(EMERGENCY_DIAGNOSES)
            .chain(INPATIENT_DIAGNOSES)
    }

    #[test]
    fn every_penicillin_has_an_alternative_for_allergic_patients() {
        for diagnosis in all_diagnoses() {
            if diagnosis.treatment.is_penicillin {
                let alternative = diagnosis.penicillin_free_treatment;
                assert!(
                    alternative.is_some_and(|m| !m.is_penicillin),
                    "{diagnosis:?}"
                );
            }
        }
        assert!(ALLERGIES.iter().any(|allergy| allergy.is_penicillin));
    }

    #[test]
    fn codes_are_shaped_like_their_systems_codes() {
        for diagnosis in all_diagnoses() {
            let snomed = diagnosis.snomed.code;
            assert!(
                snomed.len() >= 6 && snomed.bytes().all(|b| b.is_ascii_digit()),
                "{snomed}"
            );
            for medication in [
                Some(diagnosis.treatment),
                diagnosis.penicillin_free_treatment,
            ]
            .into_iter()
            .flatten()
            {
                // ATC chemical substance level: letter, 2 digits, 2 letters, 2 digits.
                let atc = medication.atc.code.as_bytes();
                assert_eq!(atc.len(), 7, "{}", medication.atc.code);
                assert!(atc[0].is_ascii_uppercase() && atc[3].is_ascii_uppercase());
                assert!(atc[1].is_ascii_digit() && atc[5].is_ascii_digit());
                assert!(medication.doses_per_day >= 1);
            }
        }
        for commune in COMMUNES {
            assert_eq!(commune.postal_code.len(), 5);
            assert_eq!(commune.insee_code.len(), 5);
            assert_eq!(
                commune.postal_code[..2],
                commune.insee_code[..2],
                "{}",
                commune.name
            );
        }
        for origin in NAME_ORIGINS {
            assert!(
                origin
                    .birth_countries
                    .iter()
                    .all(|c| c.len() == 5 && c.starts_with("99"))
            );
        }
    }
}
