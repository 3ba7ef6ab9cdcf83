-- Argo CD health check for switchyard.dev/MessageBroker.
--
-- Follows the kstatus rules the operator writes for (the same rules Flux applies):
--   no status yet, or status.observedGeneration behind metadata.generation -> Progressing
--   being deleted                                                          -> Progressing
--   Reconciling=True                                                       -> Progressing
--   Stalled=True (a spec or broker change is needed)                       -> Degraded
--   Ready=True                                                             -> Healthy
--   anything else                                                          -> Progressing, with Ready's message
-- Ready=False alone never means Degraded: the operator is still retrying, and says so.
local hs = {}

local function find_condition(conditions, condition_type)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function describe(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    if condition.reason ~= nil and condition.reason ~= "" then
      return condition.reason .. ": " .. condition.message
    end
    return condition.message
  end
  if condition ~= nil and condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason
  end
  return fallback
end

local status = obj.status
local conditions = nil
if status ~= nil then
  conditions = status.conditions
end
local ready = find_condition(conditions, "Ready")
local reconciling = find_condition(conditions, "Reconciling")
local stalled = find_condition(conditions, "Stalled")

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Deleting: waiting for the operator to clean up")
  return hs
end

if status == nil or conditions == nil or #conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the Ready condition")
return hs
