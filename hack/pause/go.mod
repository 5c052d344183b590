module modelpilot.dev/pause

go 1.26
