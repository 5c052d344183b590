-- Argo CD health check for modelpilot.dev/ModelDeployment.
-- Install under resource.customizations.health.modelpilot.dev_ModelDeployment (see README.md here).
-- Reads only what the operator promises to keep stable: observedGeneration and the conditions
-- Ready, Degraded and Progressing (reasons are CamelCase words, messages are for people).
local hs = {status = "Progressing", message = "Waiting for the modelpilot operator"}

local function condition(conds, t)
  if conds == nil then return nil end
  for _, c in ipairs(conds) do
    if c.type == t then return c end
  end
  return nil
end

if obj.status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conds = obj.status.conditions
local ready = condition(conds, "Ready")
local degraded = condition(conds, "Degraded")
local progressing = condition(conds, "Progressing")

if obj.spec ~= nil and obj.spec.replicas == 0 and ready ~= nil and ready.status == "True" then
  hs.status = "Suspended"
  hs.message = "Scaled to zero replicas"
  return hs
end
-- Like Argo Rollouts: a canary walking its steps is Progressing (sync waves wait for it), and a
-- version rolled back by its analysis is Degraded, although the stable version still serves.
if degraded ~= nil and degraded.status == "True" and degraded.reason == "RolledBack" then
  hs.status = "Degraded"
  hs.message = "RolledBack: " .. (degraded.message or "")
  return hs
end
if progressing ~= nil and progressing.status == "True" and progressing.reason == "CanaryRollout" then
  hs.message = progressing.message or "Canary rollout"
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Serving"
  return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = (degraded.reason or "Degraded") .. ": " .. (degraded.message or "")
  return hs
end
if progressing ~= nil and progressing.status == "True" then
  hs.message = progressing.message or "Rolling out"
  return hs
end
if ready ~= nil then
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
end
return hs
