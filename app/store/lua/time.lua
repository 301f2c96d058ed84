-- Read the clock of the server that holds a key (in a Cluster, each node has its own clock;
-- a token's times are kept on the clock of the node that stores it).
-- KEYS[1] any key of the slot whose server is asked
-- Returns that server's time as text: unix seconds with microseconds
local t = redis.call('TIME')
return string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
