"""Purpose limitation: may this read, for this purpose, touch this category of this subject?

Pure functions over the catalog and the subject's row (no I/O), so every rule is
testable on its own. Errors name purposes and categories (catalog names), never data.
"""

from __future__ import annotations

from vault.catalog import Catalog, Category, Purpose
from vault.errors import PermissionDenied, SubjectShredded
from vault.storage import SubjectKeyInfo
from vault.vocabulary import WRITABLE, SubjectState


def authorize_subject(catalog: Catalog, purpose_name: str, subject: SubjectKeyInfo) -> Purpose:
    """Subject-wide rules: objection, consent for the purpose, restriction, erasure."""
    purpose = catalog.purpose(purpose_name)
    if subject.state not in (*WRITABLE, SubjectState.HELD):
        raise SubjectShredded("the subject was erased", subject_id=subject.subject_id)
    if purpose.subject_right:
        return purpose  # the subject's own access or portability request
    if purpose.name in subject.objections:
        raise PermissionDenied(
            "OBJECTED", f"the subject objected to the purpose {purpose.name}", purpose=purpose.name
        )
    if purpose.consent and purpose.consent not in subject.consents:
        raise PermissionDenied(
            "CONSENT_MISSING",
            f"purpose {purpose.name} needs the consent {purpose.consent}",
            purpose=purpose.name,
            consent=purpose.consent,
        )
    if subject.restricted and not purpose.allowed_under_restriction:
        raise PermissionDenied(
            "RESTRICTED",
            f"processing is restricted; purpose {purpose.name} is not allowed under restriction",
            purpose=purpose.name,
        )
    return purpose


def category_denial(
    category: Category, purpose: Purpose, subject: SubjectKeyInfo
) -> PermissionDenied | None:
    """Category rules for an already authorized purpose; None when the read may go on."""
    if subject.state == SubjectState.HELD:
        if category.retention.kind.value != "legal_hold":
            return PermissionDenied("ERASED", "the subject was erased", category=category.name)
        if not purpose.subject_right and purpose.name not in category.purposes_after_erasure:
            return PermissionDenied(
                "ERASED",
                f"after erasure, {category.name} may only be read for its legal purposes",
                category=category.name,
                purpose=purpose.name,
            )
        return None
    if purpose.subject_right:
        return None
    if purpose.name not in category.purposes:
        return PermissionDenied(
            "PURPOSE_NOT_ALLOWED",
            f"category {category.name} may not be read for {purpose.name}",
            category=category.name,
            purpose=purpose.name,
        )
    if category.consent and category.consent not in subject.consents:
        return PermissionDenied(
            "CONSENT_MISSING",
            f"category {category.name} needs the consent {category.consent}",
            category=category.name,
            consent=category.consent,
        )
    return None


def authorize_read(
    catalog: Catalog, category: Category, purpose_name: str, subject: SubjectKeyInfo
) -> Purpose:
    purpose = authorize_subject(catalog, purpose_name, subject)
    denial = category_denial(category, purpose, subject)
    if denial is not None:
        raise denial
    return purpose


def readable_categories(catalog: Catalog, purpose_name: str, subject: SubjectKeyInfo) -> list[str]:
    """Categories a multi-category read (list, export) may include for this purpose."""
    purpose = authorize_subject(catalog, purpose_name, subject)
    return sorted(
        name
        for name, category in catalog.categories.items()
        if category_denial(category, purpose, subject) is None
    )


def authorize_write(category: Category, subject: SubjectKeyInfo) -> None:
    """Storing a consent-based category needs the consent (card numbers, location)."""
    if category.consent and category.consent not in subject.consents:
        raise PermissionDenied(
            "CONSENT_MISSING",
            f"storing {category.name} needs the consent {category.consent}",
            category=category.name,
            consent=category.consent,
        )


def refuse_if_restricted(subject: SubjectKeyInfo) -> None:
    """Restriction stops new processing: collecting new data (CreateRecord) and
    starting retention clocks. Rectification and erasure stay possible (they are
    rights the restriction usually accompanies)."""
    if subject.restricted:
        raise PermissionDenied("RESTRICTED", "processing of this subject is restricted")
