// The Lambda lane's policy evaluator. Reads JSON lines on stdin: first
// {"roles": {roleArn: [statement...]}, "resourcePolicies": {arnPrefix: doc}},
// then one {"id", "role", "action", "resource"} per AWS call; answers one
// {"id", "result", "errors"} line per call ("Allowed", "ImplicitlyDenied",
// "ExplicitlyDenied" or "Error").
import { runSimulation } from '@cloud-copilot/iam-simulate'
import { createInterface } from 'node:readline'

let roles = {}
let resourcePolicies = {}

function resourcePolicyFor(resource) {
  for (const [prefix, doc] of Object.entries(resourcePolicies)) {
    if (resource === prefix || resource.startsWith(prefix + '/')) return doc
  }
  return undefined
}

async function evaluate(call) {
  const statements = roles[call.role]
  if (!statements) return { id: call.id, result: 'Error', errors: `no role ${call.role}` }
  const account = call.role.split(':')[4]
  const simulation = {
    identityPolicies: [{ name: 'execution-role', policy: { Version: '2012-10-17', Statement: statements } }],
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: resourcePolicyFor(call.resource),
    request: {
      action: call.action,
      principal: call.role,
      resource: { accountId: account, resource: call.resource },
      // Functions reach AWS over TLS; the lane's plain HTTP stands in for it.
      contextVariables: { 'aws:SecureTransport': 'true' }
    }
  }
  const response = await runSimulation(simulation, {})
  if (response.resultType === 'error') {
    return { id: call.id, result: 'Error', errors: JSON.stringify(response.errors) }
  }
  return { id: call.id, result: response.overallResult }
}

const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (!line.trim()) continue
  const message = JSON.parse(line)
  if (message.roles) {
    roles = message.roles
    resourcePolicies = message.resourcePolicies || {}
    process.stdout.write(JSON.stringify({ ready: true }) + '\n')
    continue
  }
  let answer
  try {
    answer = await evaluate(message)
  } catch (e) {
    answer = { id: message.id, result: 'Error', errors: String(e) }
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
}
