//! Validation of FHIR R4 resources. (Being written.)
