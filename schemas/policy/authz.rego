# METADATA
# title: CompanyOS authorization
# description: |
#   Deny by default. The single entry point is `decision`; the Go engine
#   (policy/) evaluates data.companyos.authz.decision and stamps the bundle's
#   version and hash into every receipt.
#
#   decision.reasons explains the outcome: on allow, the rule(s) that granted
#   it (result true); on deny, why each candidate rule did not apply
#   (result false) plus a `default_deny` summary. Reasons are objects
#   {"rule", "result", "message", "attributes"}; they end up in signed
#   receipts, so messages must be deterministic functions of the input.
#
#   Input (see policy.Input): action, tenant, principal {id, kind, roles,
#   attrs, mfa, exists}, resource {id, kind, attrs, exists}, and for
#   relation.* also target and relation. principal.roles is the union of
#   token-asserted roles and the entity's "roles" attribute.
#
#   Decide is on the hot path: the allow path only touches `grants`; the
#   more expensive explanations in `denials` are evaluated only on deny.
package companyos.authz

# --- Decision ---------------------------------------------------------------

# A rule must grant the action AND every obligation that applies must be met
# (step-up MFA, dual control, no self-approval). An unmet obligation denies
# with the obligation attached, so the caller knows what to do next; when no
# rule grants the action at all, no obligation would help, so none is listed.
decision := {"allow": true, "reasons": grants, "obligations": []} if {
	count(grants) > 0
	count(unmet) == 0
} else := {"allow": false, "reasons": grants | unmet, "obligations": obligations} if {
	count(grants) > 0
} else := {"allow": false, "reasons": denials | unmet, "obligations": []}

# allow is decision.allow, for tests and ad-hoc queries.
default allow := false

allow if {
	count(grants) > 0
	count(unmet) == 0
}

# --- Facts ------------------------------------------------------------------

known_action if input.action in data.companyos.actions

editor_actions := data.companyos.roles.editor.actions

# A region only counts when it is a non-empty string.
principal_region := r if {
	r := input.principal.attrs.region
	is_string(r)
	r != ""
}

resource_region := r if {
	r := input.resource.attrs.region
	is_string(r)
	r != ""
}

# The raw values (null when absent), for rationale. Precise input refs (not
# object.get(input, …)) keep decisions memoisable by the values they read.
default raw_principal_region := null

raw_principal_region := input.principal.attrs.region

default raw_resource_region := null

raw_resource_region := input.resource.attrs.region

# --- Rule: admin_all ----------------------------------------------------------
# Principals with role "admin" may perform every known action.

grants contains {
	"rule": "admin_all",
	"result": true,
	"message": sprintf("role \"admin\" may perform %q", [input.action]),
	"attributes": {"action": input.action, "role": "admin"},
} if {
	known_action
	"admin" in input.principal.roles
}

denials contains {
	"rule": "admin_all",
	"result": false,
	"message": "principal lacks role \"admin\"",
	"attributes": {"roles": sorted_roles},
} if {
	not "admin" in input.principal.roles
}

# --- Rule: editor_same_region -------------------------------------------------
# Principals with role "editor" may perform the editor actions
# (data.companyos.roles.editor.actions) on resources in their own region.

grants contains {
	"rule": "editor_same_region",
	"result": true,
	"message": sprintf("role \"editor\" may perform %q in own region %q", [input.action, principal_region]),
	"attributes": {"action": input.action, "role": "editor", "region": principal_region},
} if {
	editor_may_attempt
	principal_region == resource_region
}

# editor_may_attempt holds when only the region condition remains to check.
editor_may_attempt if {
	known_action
	"editor" in input.principal.roles
	input.action in editor_actions
}

denials contains {
	"rule": "editor_same_region",
	"result": false,
	"message": "principal lacks role \"editor\"",
	"attributes": {"roles": sorted_roles},
} if {
	not "editor" in input.principal.roles
}

denials contains {
	"rule": "editor_same_region",
	"result": false,
	"message": sprintf("action %q is not granted to role \"editor\" (granted: %s)", [action, concat(", ", sort(editor_actions))]),
	"attributes": {"action": action, "editor_actions": sort(editor_actions)},
} if {
	not input.action in editor_actions
}

denials contains {
	"rule": "editor_same_region",
	"result": false,
	"message": "principal has no region (attrs.region must be a non-empty string)",
	"attributes": {"principal_region": raw_principal_region},
} if {
	editor_may_attempt
	not principal_region
}

denials contains {
	"rule": "editor_same_region",
	"result": false,
	"message": "resource has no region (attrs.region must be a non-empty string)",
	"attributes": {"resource_region": raw_resource_region},
} if {
	editor_may_attempt
	not resource_region
}

denials contains {
	"rule": "editor_same_region",
	"result": false,
	"message": sprintf("principal region %q != resource region %q", [principal_region, resource_region]),
	"attributes": {"principal_region": principal_region, "resource_region": resource_region},
} if {
	editor_may_attempt
	principal_region != resource_region
}

# --- Rule: role_grant ---------------------------------------------------------
# A role whose entry in data.companyos.roles lists the action under "actions"
# and is not "regional" may perform it anywhere in the tenant (auditor:
# provenance.disclose/export; finance: pricing.set).

grants contains {
	"rule": "role_grant",
	"result": true,
	"message": sprintf("role %q may perform %q", [role, input.action]),
	"attributes": {"action": input.action, "role": role},
} if {
	known_action
	some role in input.principal.roles
	r := data.companyos.roles[role]
	not r.regional
	input.action in r.actions
}

denials contains {
	"rule": "role_grant",
	"result": false,
	"message": sprintf("no role of the principal grants %q (roles granting it: %s)", [action, concat(", ", granting_roles)]),
	"attributes": {"action": action, "roles": sorted_roles, "granting_roles": granting_roles},
} if {
	known_action
	count(granting_roles) > 0
}

# granting_roles are the non-regional roles whose actions include the action.
granting_roles := sort([name |
	some name, r in data.companyos.roles
	not r.regional
	input.action in object.get(r, "actions", [])
])

# --- Obligation: step_up_mfa ----------------------------------------------------
# High-risk actions (data.companyos.step_up.actions: deletes, bundle
# publication, exports, disclosures) need a multi-factor login no older than
# data.companyos.step_up.max_age_seconds.

step_up_action if input.action in data.companyos.step_up.actions

mfa_fresh if {
	input.principal.mfa == true
	input.principal.mfa_age_seconds >= 0
	input.principal.mfa_age_seconds <= data.companyos.step_up.max_age_seconds
}

default raw_mfa_age := null

raw_mfa_age := input.principal.mfa_age_seconds

default raw_mfa := false

raw_mfa := input.principal.mfa

unmet contains {
	"rule": "step_up_mfa",
	"result": false,
	"message": sprintf("%q needs a multi-factor login within the last %d seconds", [input.action, data.companyos.step_up.max_age_seconds]),
	"attributes": {"mfa": raw_mfa, "mfa_age_seconds": raw_mfa_age, "max_age_seconds": data.companyos.step_up.max_age_seconds},
} if {
	step_up_action
	not mfa_fresh
}

obligations contains {"type": "mfa_required", "params": {"max_age_seconds": data.companyos.step_up.max_age_seconds}} if {
	step_up_action
	not mfa_fresh
}

# --- Obligation: dual_control -----------------------------------------------------
# Deleting a protected resource (attrs.protected == true, or a classification
# in data.companyos.dual_control.classifications) needs approvals
# (approval.grant) from data.companyos.dual_control.approvals distinct
# eligible approvers other than the requester, still unexpired. The processor
# passes the valid approvals it holds for (action, resource, requester) as
# input.context.approvals.

protected_resource if input.resource.attrs.protected == true

protected_resource if input.resource.attrs.classification in data.companyos.dual_control.classifications

dual_control_action if {
	input.action in data.companyos.dual_control.actions
	protected_resource
}

# eligible_approvers are the distinct approvers that count: not the
# requester, holding an eligible role when they approved. The requester comes
# as input.context.requester (not input.principal.id, which would make every
# memoised decision, e.g. who_can's, depend on the principal's id).
default ctx_requester := null

ctx_requester := input.context.requester

default ctx_approvals := []

ctx_approvals := input.context.approvals

default raw_classification := null

raw_classification := input.resource.attrs.classification

default raw_protected := null

raw_protected := input.resource.attrs.protected

default raw_justification := null

raw_justification := input.context.justification

eligible_approvers := {a.approver |
	some a in ctx_approvals
	a.approver != input.context.requester
	some r in a.approver_roles
	r in data.companyos.dual_control.eligible_roles
}

unmet contains {
	"rule": "dual_control",
	"result": false,
	"message": sprintf("deleting protected %s needs %d approvals from distinct eligible approvers other than the requester; has %d", [input.resource.id, data.companyos.dual_control.approvals, count(eligible_approvers)]),
	"attributes": {
		"approvers": sort(eligible_approvers),
		"required": data.companyos.dual_control.approvals,
		"eligible_roles": data.companyos.dual_control.eligible_roles,
		"classification": raw_classification,
		"protected": raw_protected,
	},
} if {
	dual_control_action
	count(eligible_approvers) < data.companyos.dual_control.approvals
}

obligations contains {"type": "approvals_required", "params": {
	"count": data.companyos.dual_control.approvals,
	"have": count(eligible_approvers),
	"eligible_roles": data.companyos.dual_control.eligible_roles,
	"excluding": [ctx_requester],
	"action": input.action,
	"resource": input.resource.id,
}} if {
	dual_control_action
	count(eligible_approvers) < data.companyos.dual_control.approvals
}

# --- Obligation: no_self_approval ------------------------------------------------
# Nobody approves their own request (input.context.approval.approver is the
# principal, set by the processor).

unmet contains {
	"rule": "no_self_approval",
	"result": false,
	"message": "a requester may not approve their own request",
	"attributes": {"requester": input.context.approval.requester, "approver": input.context.approval.approver},
} if {
	input.action == "approval.grant"
	input.context.approval.requester == input.context.approval.approver
}

# --- Obligation: justification ----------------------------------------------------
# Actions in data.companyos.justification.actions need a non-empty
# justification with the command.

unmet contains {
	"rule": "justification",
	"result": false,
	"message": sprintf("%q needs a justification", [input.action]),
	"attributes": {"justification": raw_justification},
} if {
	input.action in data.companyos.justification.actions
	not has_justification
}

has_justification if {
	j := input.context.justification
	is_string(j)
	count(trim_space(j)) > 0
}

obligations contains {"type": "justification_required", "params": {"action": input.action}} if {
	input.action in data.companyos.justification.actions
	not has_justification
}

# --- Obligation: employment_active ------------------------------------------------
# A terminated principal (attrs.employment_status) is denied every action.

unmet contains {
	"rule": "employment_active",
	"result": false,
	"message": "the principal's employment_status is \"terminated\"",
	"attributes": {"employment_status": "terminated"},
} if {
	input.principal.attrs.employment_status == "terminated"
}

# --- Obligation: risk_step_up --------------------------------------------------------
# A principal whose attrs.risk_score is at or above
# data.companyos.risk.step_up_score needs a fresh MFA login for every action.

high_risk if {
	is_number(input.principal.attrs.risk_score)
	input.principal.attrs.risk_score >= data.companyos.risk.step_up_score
}

unmet contains {
	"rule": "risk_step_up",
	"result": false,
	"message": sprintf("risk score %v >= %v needs a multi-factor login within the last %d seconds", [input.principal.attrs.risk_score, data.companyos.risk.step_up_score, data.companyos.step_up.max_age_seconds]),
	"attributes": {"risk_score": input.principal.attrs.risk_score, "step_up_score": data.companyos.risk.step_up_score, "mfa": raw_mfa},
} if {
	high_risk
	not mfa_fresh
}

obligations contains {"type": "mfa_required", "params": {"max_age_seconds": data.companyos.step_up.max_age_seconds}} if {
	high_risk
	not mfa_fresh
}

# --- Obligation: data_residency ------------------------------------------------------
# A resource with residency tags (attrs.residency, a list of regions) may only
# be acted on by principals whose region is one of them. Creating it is not
# handling existing data: the creator sets the tags.

default raw_residency := null

raw_residency := input.resource.attrs.residency

unmet contains {
	"rule": "data_residency",
	"result": false,
	"message": sprintf("resource %s may only be handled from %s; principal region is %v", [input.resource.id, concat(", ", [r | some r in input.resource.attrs.residency; is_string(r)]), raw_principal_region]),
	"attributes": {"residency": raw_residency, "principal_region": raw_principal_region},
} if {
	input.action != "entity.create"
	is_array(input.resource.attrs.residency)
	count(input.resource.attrs.residency) > 0
	not raw_principal_region in input.resource.attrs.residency
}

# --- Every deny -----------------------------------------------------------------

denials contains {
	"rule": "known_action",
	"result": false,
	"message": sprintf("unknown action %q", [action]),
	"attributes": {"action": action},
} if {
	not known_action
}

denials contains {
	"rule": "default_deny",
	"result": false,
	"message": sprintf("no rule allows action %q for roles [%s]", [action, concat(", ", sorted_roles)]),
	"attributes": {"action": action, "roles": sorted_roles},
} if {
	count(grants) == 0
}

# --- Helpers for explanations (deny path only) -------------------------------------

# action is the requested action, or "" when absent or not a string.
action := a if {
	a := input.action
	is_string(a)
} else := ""

sorted_roles := sort({r | some r in input.principal.roles; is_string(r)})
